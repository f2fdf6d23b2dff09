"""ModernBERT pretraining side by side on this CPU (issue 28).

    taskset -c 1 .venv/bin/python bench/bench_modern_pretrain.py --compare=arch [--steps=400]
    taskset -c 1 .venv/bin/python bench/bench_modern_pretrain.py --compare=hf [--steps=400] [--seed=0]

(smoke test: --steps=4 --evals=2 --eval-batches=2, about a minute once the data is prepared)

Both comparisons train on the same batches of one prepared corpus and are
evaluated every --steps/--evals steps on the same held-out batches (MLM
accuracy, loss at the masked positions):

  --compare=arch  ModernBERT-tiny (configs/pretrain/modernbert.py:size=tiny: 3
                  layers, hidden 128, GeGLU 192, 128-token window on layers 1-2)
                  vs BERT-tiny (configs/pretrain/bert.py:size=tiny: 2 layers,
                  hidden 128, GELU 512) at the same training-FLOP budget:
                  ModernBERT runs --steps, BERT the number of steps whose
                  FLOPs (model/flops.py, per packed row of --seq tokens with
                  the row's prediction slots) equal ModernBERT's.
  --compare=hf    our ModernBERT-tiny vs transformers.ModernBertForMaskedLM
                  (PyTorch, fp32, --torch-threads) from the same initial weights
                  (ours exported by convert/hf_format.write_hf_dir, loaded with
                  from_pretrained), same batches, same optimizer and schedule.

Data (ModernBERT's recipe shrunk to a CPU): the ELTeC-eng novels, those whose
index in file-name order is 3 mod 10 held out whole (as bench_pretrain_peer.py);
a cased byte-level BPE of --vocab-size trained on the training novels
(`data.vocab --kind=bpe`), both splits prepared with it; MLM only, 30%
masking (80/10/10), no NSP, sequences packed up to 4 per row of --seq tokens
with segment ids. Everything preparable lives under --workdir and is reused.

Optimizer, both sides and both comparisons: the ModernBERT recipe's
(configs/pretrain/modernbert.py): AdamW b1 0.9, b2 0.98, eps 1e-6, decoupled
weight decay 1e-5 on kernels and embeddings only, global-norm clipping 1.0,
warmup-stable-decay schedule (10% warmup, 20% 1-sqrt decay to 0), peak lr
--lr, fp32, no dropout (ModernBERT's recipe has none; BERT-tiny gets
--bert-dropout, 0 by default so only the architecture differs).

HF side: transformers' eager/sdpa ModernBERT takes a [batch, length] padding
mask only (its unpadded path needs flash-attn on a GPU), so for packed rows
the bench hands its attention layers the block-diagonal masks our segment ids
define (global: same sequence; local: same sequence and |i - j| <= 64) through
ModernBertModel._update_attention_mask, with position ids restarting per
sequence, the inputs its flash-attn varlen path would see. Its MLM head runs
at the masked positions only (config.sparse_prediction, as ours gathers).

The contenders train in alternating segments inside one process (pin it to
one core), so load from other users hits both. Results (curves, timings) go
to WORKDIR/results-<tag>.json, the table to stdout, --plot writes a PNG of the
held-out accuracy curves.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow otherwise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One CPU thread for XLA (the run is pinned to one core; torch gets --torch-threads),
# and no TPU plugin probing on a machine without one.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_pretrain_peer import corpus_spec, split_novels, write_json  # noqa: E402
from common import load_average, markdown_table  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bert_jax.convert import hf_format  # noqa: E402
from bert_jax.data.pipeline import PretrainingPipeline  # noqa: E402
from bert_jax.data.prepare import prepare_corpus, summary  # noqa: E402
from bert_jax.data.vocab import train_vocab  # noqa: E402
from bert_jax.model import flops, sharding  # noqa: E402
from bert_jax.model.heads import BertForPreTraining  # noqa: E402
from bert_jax.model.params import flat_params  # noqa: E402
from bert_jax.storage.shared_data import shared_data_path  # noqa: E402
from bert_jax.train import pretrain_job  # noqa: E402
from bert_jax.train.optim import build_optimizer  # noqa: E402
from bert_jax.train.step import init_state, jit_eval_step, jit_train_step, state_spec  # noqa: E402
from configs.pretrain import bert as bert_recipe  # noqa: E402
from configs.pretrain import modernbert as modern_recipe  # noqa: E402

PACKING = 4
KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_ids",
        "masked_weights", "segment_ids", "position_ids")


# ---- Data -------------------------------------------------------------------------------


def build_data(workdir: pathlib.Path, vocab_size: int, workers: int) -> dict:
    """BPE tokenizer.json and the prepared train / held-out caches, built once."""
    train_files, held_files = split_novels(shared_data_path("corpus", "eltec-eng"))
    tok = workdir / f"bpe-{vocab_size}" / "tokenizer.json"
    if not tok.exists():
        print(f"training a {vocab_size}-token byte-level BPE on {len(train_files)} novels",
              file=sys.stderr, flush=True)
        train_vocab(corpus_spec(train_files), vocab_size, tok, kind="bpe")
    dirs = {}
    for name, files in (("train", train_files), ("heldout", held_files)):
        out = workdir / f"prepared-bpe{vocab_size}-{name}"
        manifest = prepare_corpus(corpus_spec(files), tok, out, num_workers=workers)
        print(f"{name}: {len(files)} novels; {summary(manifest)}", file=sys.stderr, flush=True)
        dirs[name] = str(out)
    return {"tokenizer": str(tok), **dirs,
            "heldout_novels": [pathlib.Path(f).stem for f in held_files]}


def data_config(prepared_dir: str, seq: int, seed: int):
    """The recipe's data config (MLM only, 30%, packed) at `seq` tokens."""
    c = modern_recipe.get_config("size=tiny,runlocal").data
    c.prepared_dir = prepared_dir
    c.max_seq_length = seq
    c.max_predictions_per_seq = math.ceil(0.3 * (seq - 2)) + 1
    c.packing = PACKING
    c.seed = seed
    return c


def draw(pipe: PretrainingPipeline, n: int, desc: str) -> list[dict[str, np.ndarray]]:
    return [{k: b[k] for k in KEYS} for b in
            (pipe.batch(s) for s in tqdm(range(n), desc=desc, leave=False))]


def dense_labels(b: dict[str, np.ndarray]) -> np.ndarray:
    """HF's labels: the masked ids at their positions, -100 elsewhere."""
    out = np.full_like(b["input_ids"], -100)
    w = b["masked_weights"] > 0
    rows = np.nonzero(w)[0]
    out[rows, b["masked_positions"][w]] = b["masked_ids"][w]
    if (out != -100).sum() != w.sum():
        raise SystemExit("batch: two masked slots share a position")
    return out


# ---- Models and optimizer ---------------------------------------------------------------


def model_configs(vocab: int, special: dict[str, int], bert_dropout: float):
    """(ModernBERT-tiny, BERT-tiny) BertConfigs from the recipe files, fp32."""
    m = modern_recipe.get_config("size=tiny,runlocal")
    b = bert_recipe.get_config("size=tiny,runlocal")
    b.model.hidden_dropout_prob = b.model.attention_probs_dropout_prob = bert_dropout
    return (pretrain_job.bert_config(m, vocab, special), pretrain_job.bert_config(b, vocab))


def optim_config(lr: float):
    o = modern_recipe.get_config("size=tiny,runlocal").optim
    o.lr = lr
    o.warmup_steps, o.warmup_ratio = 0, 0.1
    o.decay_steps, o.decay_ratio, o.decay_shape = 0, 0.2, "sqrt"
    return o


def flops_per_row(cfg, seq: int, predictions: int) -> float:
    f = flops.train_flops_per_sequence(cfg, seq, predictions)
    if not cfg.modern:  # no NSP here: flops.py's BERT count includes pooler + NSP
        h = cfg.hidden_size
        f -= 6 * (h * h + 2 * h)
    return f


class Ours:
    """Our jitted train / eval step on one CPU device, pretraining's MLM-only objective."""

    def __init__(self, cfg, optim, steps: int, seed: int):
        self.cfg = cfg
        self.optimizer, self.schedule = build_optimizer(optim, steps)
        self.mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
        objective = pretrain_job.pretraining_objective(nsp=False, gathered=True)

        def model_fn(key):
            return BertForPreTraining(cfg, rngs=nnx.Rngs(params=key))

        with self._ctx():
            self.spec = state_spec(model_fn, self.optimizer, self.mesh)
            self.state = init_state(self.spec, model_fn, self.optimizer, seed)
            self.step_fn = jit_train_step(self.spec, self.mesh, objective, self.optimizer,
                                          self.schedule)
            self.eval_fn = jit_eval_step(self.spec, self.mesh, objective)
        self.rng = jax.random.key(seed + 1)
        self.pending: list = []

    @contextlib.contextmanager
    def _ctx(self):
        with jax.set_mesh(self.mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
            yield

    def initial_params(self) -> dict[str, np.ndarray]:
        return flat_params(nnx.merge(self.spec.graphdef, self.state["params"]))

    def step(self, b: dict[str, np.ndarray]) -> None:
        with self._ctx():
            self.state, metrics = self.step_fn(self.state, b, self.rng)
        self.pending.append(metrics["loss"])

    def sync(self) -> list[float]:
        losses = [float(x) for x in jax.device_get(self.pending)]
        self.pending = []
        return losses

    def eval_sums(self, b: dict[str, np.ndarray]) -> dict[str, float]:
        with self._ctx():
            sums = self.eval_fn(self.state["params"], b)
        return {k: float(v) for k, v in jax.device_get(sums).items()}


class HF:
    """transformers.ModernBertForMaskedLM loaded from our exported initial weights."""

    def __init__(self, cfg, flat: dict[str, np.ndarray], export_dir: pathlib.Path, optim,
                 lrs: np.ndarray, threads: int, seed: int, attn: str):
        import torch
        import transformers
        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(seed)  # no dropout in this recipe; kept for completeness
        export_dir.mkdir(parents=True, exist_ok=True)
        hf_format.write_hf_dir(export_dir, cfg, flat, "pretraining")
        self.model = transformers.ModernBertForMaskedLM.from_pretrained(
            export_dir, attn_implementation=attn)
        self.model.sparse_prediction = True  # the head at labelled positions only, as ours
        self.model.train()
        self.window = cfg.local_attention
        self._masks = None
        # Packed rows: the block-diagonal masks of our segment ids (see the module doc).
        self.model.model._update_attention_mask = lambda attention_mask, output_attentions: (
            self._masks)
        named = list(self.model.named_parameters())  # the tied decoder weight listed once
        # Our decay mask: kernels and embeddings (HF: every *.weight but the norms').
        decay = [p for n, p in named if n.endswith(".weight") and "norm" not in n]
        no_decay = [p for n, p in named if not (n.endswith(".weight") and "norm" not in n)]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: float(lrs[min(s, len(lrs) - 1)]) / optim.lr)
        self.clip = optim.clip_norm
        self.losses: list[float] = []

    def _inputs(self, b: dict[str, np.ndarray]) -> dict:
        t = self.torch
        seg = t.from_numpy(b["segment_ids"]).long()
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
        n = seg.shape[1]
        i = t.arange(n)
        band = (i[:, None] - i[None, :]).abs() <= self.window // 2
        neg = t.finfo(t.float32).min
        full = t.zeros(same.shape).masked_fill(~same, neg)[:, None]
        local = t.zeros(same.shape).masked_fill(~(same & band), neg)[:, None]
        self._masks = (full, local)
        return {"input_ids": t.from_numpy(b["input_ids"]).long(),
                "attention_mask": t.from_numpy(b["attention_mask"]).long(),
                "position_ids": t.from_numpy(b["position_ids"]).long()}

    def step(self, b: dict[str, np.ndarray]) -> None:
        t = self.torch
        self.opt.zero_grad(set_to_none=True)
        out = self.model(**self._inputs(b), labels=t.from_numpy(dense_labels(b)).long())
        out.loss.backward()
        t.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        self.losses.append(float(out.loss.detach()))

    def sync(self) -> list[float]:
        losses, self.losses = self.losses, []
        return losses

    def eval_sums(self, b: dict[str, np.ndarray]) -> dict[str, float]:
        t = self.torch
        self.model.eval()
        with t.no_grad():
            logits = self.model(**self._inputs(b)).logits
        self.model.train()
        pos = t.from_numpy(b["masked_positions"]).long()
        logits = t.gather(logits, 1, pos[..., None].expand(-1, -1, logits.shape[-1]))
        ids = t.from_numpy(b["masked_ids"]).long()
        w = t.from_numpy(b["masked_weights"]).float()
        ce = t.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        return {"mlm_loss": float((ce * w).sum()),
                "mlm_correct": float(((logits.argmax(-1) == ids).float() * w).sum()),
                "mlm_weight": float(w.sum())}


# ---- Runs -------------------------------------------------------------------------------


def evaluate(contender, batches) -> dict[str, float]:
    acc: dict[str, float] = {}
    for b in batches:
        for k, v in contender.eval_sums(b).items():
            acc[k] = acc.get(k, 0.0) + v
    return pretrain_job.summarize(acc)


def train_with_evals(contenders: dict, steps: dict[str, int], batches, eval_batches,
                     evals: int, flops_row: dict[str, float], batch: int) -> dict:
    """Each contender runs its k-th of `evals` segments in turn, then is evaluated
    on the held-out batches; step 0 (the shared start) is evaluated too. The
    first step (our jit compile) is timed on its own."""
    out = {n: {"steps": steps[n], "losses": [], "wall_s": 0.0, "first_step_s": 0.0,
               "eval_s": 0.0, "curve": []} for n in contenders}
    loads = []
    total = sum(steps.values())
    with tqdm(total=total, desc="train", unit="step") as bar:
        for k in range(evals + 1):
            loads.append(os.getloadavg()[0])
            for name, c in contenders.items():
                o = out[name]
                a, z = (round(steps[name] * (k - 1) / evals) if k else 0,
                        round(steps[name] * k / evals))
                t0 = time.perf_counter()
                for s in range(a, z):
                    c.step(batches[s])
                    if s == 0:
                        o["losses"] += c.sync()
                        o["first_step_s"] = time.perf_counter() - t0
                o["losses"] += c.sync()
                o["wall_s"] += time.perf_counter() - t0
                bar.update(z - a)
                t0 = time.perf_counter()
                ev = evaluate(c, eval_batches)
                o["eval_s"] += time.perf_counter() - t0
                o["curve"].append({"step": z, "train_flops": z * batch * flops_row[name], **ev})
            bar.set_postfix({n: f"{o['curve'][-1]['mlm_accuracy']:.4f}"
                             for n, o in out.items()}, refresh=True)
    for o in out.values():
        steady = o["wall_s"] - o["first_step_s"]
        o["steps_per_s"] = (o["steps"] - 1) / steady if steady > 0 else float("nan")
    return {"runs": out, "loads": loads}


def report(res: dict) -> str:
    names = list(res["runs"])
    runs = [res["runs"][n] for n in names]
    final = [r["curve"][-1] for r in runs]
    best = [max(c["mlm_accuracy"] for c in r["curve"]) for r in runs]
    a, b = final
    rows = [
        [f"training steps (batch {res['args']['batch']})", *[str(r["steps"]) for r in runs], ""],
        ["training FLOPs (flops.py)", *[f"{c['train_flops']:.3e}" for c in final],
         f"{a['train_flops'] / b['train_flops']:.3f}x"],
        ["held-out MLM accuracy, end", *[f"{c['mlm_accuracy']:.4f}" for c in final],
         f"{100 * (a['mlm_accuracy'] - b['mlm_accuracy']):+.2f} pt"],
        ["held-out MLM accuracy, best eval", *[f"{x:.4f}" for x in best],
         f"{100 * (best[0] - best[1]):+.2f} pt"],
        ["held-out MLM loss, end", *[f"{c['mlm_loss']:.4f}" for c in final],
         f"{a['mlm_loss'] - b['mlm_loss']:+.4f}"],
        ["train loss, mean of last 50 steps",
         *[f"{np.mean(r['losses'][-50:]):.4f}" for r in runs],
         f"{np.mean(runs[0]['losses'][-50:]) - np.mean(runs[1]['losses'][-50:]):+.4f}"],
        ["train wall time (s)", *[f"{r['wall_s']:.0f}" for r in runs], ""],
        ["steps/s (after step 1)", *[f"{r['steps_per_s']:.2f}" for r in runs], ""],
        ["first step incl. compile (s)", *[f"{r['first_step_s']:.1f}" for r in runs], ""],
    ]
    return markdown_table(["", *names, f"{names[0]} - {names[1]}"], rows)


def curve_table(res: dict) -> str:
    names = list(res["runs"])
    curves = [res["runs"][n]["curve"] for n in names]
    rows = [[*[f"{c[i]['step']}" for c in curves], f"{curves[0][i]['train_flops']:.2e}",
             *[f"{c[i]['mlm_accuracy']:.4f}" for c in curves],
             *[f"{c[i]['mlm_loss']:.3f}" for c in curves]]
            for i in range(len(curves[0]))]
    return markdown_table([*[f"{n} step" for n in names], f"FLOPs ({names[0]})",
                           *[f"{n} acc" for n in names], *[f"{n} loss" for n in names]], rows)


def plot(res: dict, path: pathlib.Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x_key = "train_flops" if res["args"]["compare"] == "arch" else "step"
    for name, r in res["runs"].items():
        xs = [c[x_key] for c in r["curve"]]
        axes[0].plot(xs, [c["mlm_accuracy"] for c in r["curve"]], marker="o", label=name)
        axes[1].plot(xs, [c["mlm_loss"] for c in r["curve"]], marker="o", label=name)
    for ax, what in zip(axes, ("held-out MLM accuracy", "held-out MLM loss")):
        ax.set_xlabel("training FLOPs" if x_key == "train_flops" else "step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare", choices=("arch", "hf"), required=True)
    ap.add_argument("--steps", type=int, default=400, help="ModernBERT's training steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bert-dropout", type=float, default=0.0)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--evals", type=int, default=8, help="held-out evaluations after step 0")
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="init and data seed")
    ap.add_argument("--eval-seed", type=int, default=1234, help="held-out masking seed")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                    help="transformers' attention implementation (--compare=hf)")
    ap.add_argument("--workers", type=int, default=1, help="corpus preparation processes")
    ap.add_argument("--workdir", default="runs/modern_pretrain")
    ap.add_argument("--tag", default="")
    ap.add_argument("--plot", default="", help="write the held-out curves as this PNG")
    args = ap.parse_args()
    for name in ("steps", "batch", "evals", "eval_batches", "vocab_size", "torch_threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.steps < args.evals:
        ap.error(f"--steps={args.steps}: must be >= --evals={args.evals}")
    if not 0.0 <= args.bert_dropout < 1.0:
        ap.error(f"--bert-dropout={args.bert_dropout}: must be in [0, 1)")
    if args.seq < 16:
        ap.error(f"--seq={args.seq}: must be >= 16")
    return args


def main() -> None:
    args = parse_args()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    data = build_data(workdir, args.vocab_size, args.workers)

    train_pipe = PretrainingPipeline.from_config(
        data_config(data["train"], args.seq, args.seed), global_batch_size=args.batch)
    eval_pipe = PretrainingPipeline.from_config(
        data_config(data["heldout"], args.seq, args.eval_seed), global_batch_size=args.batch)
    tok = train_pipe.tokenizer
    modern_cfg, bert_cfg = model_configs(tok.vocab_size, pretrain_job.special_token_ids(tok),
                                         args.bert_dropout)
    preds = train_pipe.max_predictions
    optim = optim_config(args.lr)
    fl = {"modernbert": flops_per_row(modern_cfg, args.seq, preds),
          "bert": flops_per_row(bert_cfg, args.seq, preds)}
    if args.compare == "arch":
        steps = {"modernbert": args.steps,
                 "bert": int(round(args.steps * fl["modernbert"] / fl["bert"]))}
    else:
        steps = {"ours": args.steps, "hf": args.steps}
        fl = {"ours": fl["modernbert"], "hf": fl["modernbert"]}
    batches = draw(train_pipe, max(steps.values()), "train batches")
    eval_batches = draw(eval_pipe, args.eval_batches, "held-out batches")

    if args.compare == "arch":
        contenders = {"modernbert": Ours(modern_cfg, optim, steps["modernbert"], args.seed),
                      "bert": Ours(bert_cfg, optim, steps["bert"], args.seed)}
    else:
        ours = Ours(modern_cfg, optim, args.steps, args.seed)
        lrs = np.asarray(jax.vmap(ours.schedule)(jnp.arange(args.steps)), np.float64)
        hf = HF(modern_cfg, ours.initial_params(), workdir / f"init-hf-s{args.seed}", optim,
                lrs, args.torch_threads, args.seed, args.attn)
        contenders = {"ours": ours, "hf": hf}

    tag = args.tag or (f"{args.compare}-s{args.steps}-b{args.batch}-lr{args.lr:g}"
                       f"-seed{args.seed}")
    t0 = time.perf_counter()
    prog = train_with_evals(contenders, steps, batches, eval_batches, args.evals, fl,
                            args.batch)
    import torch
    import transformers
    res = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "args": vars(args), "data": data, "max_predictions_per_row": preds,
        "models": {"modernbert": modern_cfg.to_dict(), "bert": bert_cfg.to_dict()},
        "flops_per_row": fl, "optim": optim.to_dict(), **prog,
        "bench_wall_s": time.perf_counter() - t0,
        "load_average_before": load_before, "load_average_after": load_average(),
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    if args.compare == "hf":
        a, b = (np.asarray(res["runs"][n]["losses"]) for n in ("ours", "hf"))
        res["loss_gap"] = {"first_step_abs_diff": float(abs(a[0] - b[0])),
                           "first10_max_abs_diff": float(np.abs(a[:10] - b[:10]).max()),
                           "max_abs_diff": float(np.abs(a - b).max())}
    path = workdir / f"results-{tag}.json"
    write_json(path, res)
    print()
    print(report(res))
    print()
    print(curve_table(res))
    if "loss_gap" in res:
        g = res["loss_gap"]
        print(f"\ntrain loss |ours - hf|: step 1 {g['first_step_abs_diff']:.2e}, first 10 steps "
              f"max {g['first10_max_abs_diff']:.2e}, all steps max {g['max_abs_diff']:.3e}")
    print(f"\nseq {args.seq}, packing {PACKING}, {preds} prediction slots per row, 30% masking, "
          f"vocab {tok.vocab_size} (BPE), lr {args.lr:g}; held-out: {args.eval_batches} "
          f"batches of {len(data['heldout_novels'])} unseen novels")
    print(f"load average before: {load_before}, during (1 min) median "
          f"{np.median(prog['loads']):.1f} max {max(prog['loads']):.1f}, after: "
          f"{res['load_average_after']}; wrote {path}")
    if args.plot:
        plot(res, pathlib.Path(args.plot),
             f"{' vs '.join(res['runs'])}: seq {args.seq}, batch {args.batch}, "
             f"held-out {args.eval_batches} batches")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()

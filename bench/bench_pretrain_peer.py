"""Pretraining quality vs a peer: bert_mini trained by our step and by HF transformers.

    .venv/bin/python bench/bench_pretrain_peer.py [--steps=600] [--batch=32] [--lr=1e-3]
        [--dropout=0.1] [--eval-batches=100] [--vocab-size=8192] [--chunk=25]

Data: the ELTeC-eng novels (shared data `corpus/eltec-eng`). Novels whose index in
file-name order is 3 mod 10 are held out whole: they build neither the vocabulary
nor the training cache, only a separate prepared cache for evaluation. The
uncased WordPiece vocabulary (--vocab-size) is trained on the training novels;
vocabulary and both caches live under --workdir (default runs/pretrain_peer) so
reruns skip preparation.

Both contenders start from the same weights (our initialization exported with
`hf_format.to_hf`), see the same batches from one `PretrainingPipeline` (seq 128,
20 predictions, NSP) and use the same hyperparameters:

  ours  jit_train_step with pretraining.pretraining_objective (MLM head only
        at the gathered masked positions), optim.build_optimizer: AdamW b1 0.9,
        b2 0.999, eps 1e-6, weight decay 0.01 except biases and LayerNorm, linear
        warmup then linear decay to 0, global-norm clipping 1.0; fp32.
  hf    transformers BertForPreTraining (PyTorch) with dense MLM labels (-100 except
        the masked positions, so its mean loss equals ours), torch.optim.AdamW with
        the same decay groups, LambdaLR following our schedule step for step,
        clip_grad_norm_(1.0); fp32, torch threads = --torch-threads.

The two train in alternating chunks of --chunk steps inside one process, so load
from other users of the machine hits both. Then both are evaluated on the same
--eval-batches batches of the held-out cache (fixed seed): MLM accuracy, loss and
perplexity at the masked positions, NSP accuracy. Dropout masks come from
different generators, so the runs differ by noise even with equal code paths;
--dropout=0 removes that noise and shows how closely the two training paths agree.
The table goes to stdout, everything (loss curves included) to
WORKDIR/results-<tag>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow otherwise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import load_average, markdown_table  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bert_jax.convert import hf_format  # noqa: E402
from bert_jax.data.pipeline import PretrainingPipeline, default_data_config  # noqa: E402
from bert_jax.data.prepare import prepare_corpus, summary  # noqa: E402
from bert_jax.data.vocab import train_vocab  # noqa: E402
from bert_jax.model import sharding  # noqa: E402
from bert_jax.model.config import BertConfig  # noqa: E402
from bert_jax.model.heads import BertForPreTraining  # noqa: E402
from bert_jax.model.params import flat_params  # noqa: E402
from bert_jax.storage.shared_data import shared_data_path  # noqa: E402
from bert_jax.train.optim import build_optimizer  # noqa: E402
from bert_jax.train.pretrain_job import pretraining_objective, summarize  # noqa: E402
from bert_jax.train.step import init_state, jit_eval_step, jit_train_step, state_spec  # noqa: E402

HELDOUT_MOD, HELDOUT_REM = 10, 3
OURS_KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_ids",
             "masked_weights", "nsp_labels")


# ---- Data -------------------------------------------------------------------------------


def split_novels(corpus_dir: pathlib.Path) -> tuple[list[str], list[str]]:
    """(training files, held-out files): whole novels, index % 10 == 3 held out."""
    files = sorted(str(p) for p in corpus_dir.glob("*.txt"))
    if len(files) < HELDOUT_MOD:
        raise SystemExit(f"{corpus_dir}: expected the ELTeC novels (*.txt), found {len(files)}")
    held = [f for i, f in enumerate(files) if i % HELDOUT_MOD == HELDOUT_REM]
    return [f for f in files if f not in held], held


def corpus_spec(files: list[str]) -> str:
    return ",".join(f"raw:{f}" for f in files)


def build_data(workdir: pathlib.Path, vocab_size: int, workers: int) -> dict[str, str]:
    """Vocabulary and prepared caches (train, held-out), built once and reused."""
    train_files, held_files = split_novels(shared_data_path("corpus", "eltec-eng"))
    vocab = workdir / f"vocab-{vocab_size}.txt"
    if not vocab.exists():
        print(f"training a {vocab_size}-token WordPiece vocab on {len(train_files)} novels",
              file=sys.stderr, flush=True)
        train_vocab(corpus_spec(train_files), vocab_size, vocab, lowercase=True)
    dirs = {}
    for name, files in (("train", train_files), ("heldout", held_files)):
        out = workdir / f"prepared-{vocab_size}-{name}"
        manifest = prepare_corpus(corpus_spec(files), vocab, out, num_workers=workers)
        print(f"{name}: {len(files)} novels; {summary(manifest)}", file=sys.stderr, flush=True)
        dirs[name] = str(out)
    return {"vocab": str(vocab), **dirs, "heldout_novels": [pathlib.Path(f).stem
                                                           for f in held_files]}


def open_pipeline(prepared_dir: str, batch: int, seed: int) -> PretrainingPipeline:
    cfg = default_data_config()
    cfg.prepared_dir = prepared_dir
    cfg.seed = seed
    cfg.dense_labels = True  # HF's labels; the gathered arrays come from the same draw
    return PretrainingPipeline.from_config(cfg, global_batch_size=batch)


def draw_batches(pipe: PretrainingPipeline, n: int, desc: str) -> list[dict[str, np.ndarray]]:
    batches = [pipe.batch(s) for s in tqdm(range(n), desc=desc, leave=False)]
    check_labels(batches[0])
    return batches


def check_labels(b: dict[str, np.ndarray]) -> None:
    """Dense labels must mark exactly the gathered (position, id) pairs, else the
    two losses would not be the same quantity."""
    dense = np.full_like(b["input_ids"], -100)
    w = b["masked_weights"] > 0
    rows = np.nonzero(w)[0]
    dense[rows, b["masked_positions"][w]] = b["masked_ids"][w]
    if not np.array_equal(dense, b["mlm_labels"]):
        raise SystemExit("pipeline: mlm_labels disagree with masked_positions/masked_ids")


# ---- Contenders -------------------------------------------------------------------------


class Ours:
    """Our jitted train step on one CPU device."""

    def __init__(self, cfg: BertConfig, optim: ConfigDict, steps: int, seed: int):
        self.optimizer, self.schedule = build_optimizer(optim, steps)
        self.mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
        objective = pretraining_objective(nsp=True, gathered=True)

        def model_fn(key):
            return BertForPreTraining(cfg, rngs=nnx.Rngs(params=key))

        with self._ctx():
            self.spec = state_spec(model_fn, self.optimizer, self.mesh)
            self.state = init_state(self.spec, model_fn, self.optimizer, seed)
            self.step_fn = jit_train_step(self.spec, self.mesh, objective,
                                                   self.optimizer, self.schedule)
            self.eval_fn = jit_eval_step(self.spec, self.mesh, objective)
        self.rng = jax.random.key(seed + 1)
        self.pending: list = []

    @contextlib.contextmanager
    def _ctx(self):
        with jax.set_mesh(self.mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
            yield

    def initial_params(self) -> dict[str, np.ndarray]:
        return flat_params(nnx.merge(self.spec.graphdef, self.state["params"]))

    def step(self, batch: dict[str, np.ndarray]) -> None:
        with self._ctx():
            self.state, metrics = self.step_fn(self.state, _select(batch, OURS_KEYS), self.rng)
        self.pending.append(metrics["loss"])

    def sync(self) -> list[float]:
        """Wait for the dispatched steps; their losses."""
        losses = [float(x) for x in jax.device_get(self.pending)]
        self.pending = []
        return losses

    def eval_sums(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        with self._ctx():
            sums = self.eval_fn(self.state["params"], _select(batch, OURS_KEYS))
        return {k: float(v) for k, v in jax.device_get(sums).items()}

    def save(self, d: pathlib.Path) -> None:
        leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(self.state))]
        with open(d / "ours.npz", "wb") as f:
            np.savez(f, *leaves)

    def restore(self, d: pathlib.Path) -> None:
        with np.load(d / "ours.npz") as z:
            leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
        tree = jax.tree.unflatten(jax.tree.structure(self.state), leaves)
        self.state = jax.device_put(tree, self.spec.shardings)


class HF:
    """transformers BertForPreTraining (PyTorch) with our initial weights."""

    def __init__(self, cfg: BertConfig, flat: dict[str, np.ndarray], optim: ConfigDict,
                 lrs: np.ndarray, threads: int, seed: int):
        import torch
        import transformers
        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(seed)  # HF's dropout masks; the weights come from `flat`
        hf_cfg = transformers.BertConfig.from_dict(hf_format.hf_config_dict(cfg, "pretraining"))
        self.model = transformers.BertForPreTraining(hf_cfg)
        load_weights(self.model, flat)
        self.model.train()
        named = list(self.model.named_parameters())  # tied decoder weight listed once
        no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
        decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps, fused=True)
        # Step s uses our schedule's value at s (the first step too: 0 during warmup).
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: float(lrs[min(s, len(lrs) - 1)]) / optim.lr)
        self.clip = optim.clip_norm
        self.losses: list[float] = []

    def _inputs(self, b: dict[str, np.ndarray]) -> dict:
        t = self.torch
        return {"input_ids": t.from_numpy(b["input_ids"]).long(),
                "token_type_ids": t.from_numpy(b["token_type_ids"]).long(),
                "attention_mask": t.from_numpy(b["attention_mask"]).long()}

    def step(self, b: dict[str, np.ndarray]) -> None:
        t = self.torch
        self.opt.zero_grad(set_to_none=True)
        out = self.model(**self._inputs(b), labels=t.from_numpy(b["mlm_labels"]).long(),
                         next_sentence_label=t.from_numpy(b["nsp_labels"]).long())
        out.loss.backward()
        t.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        self.losses.append(float(out.loss.detach()))

    def sync(self) -> list[float]:
        losses, self.losses = self.losses, []
        return losses

    def save(self, d: pathlib.Path) -> None:
        self.torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                         "sched": self.sched.state_dict(), "rng": self.torch.get_rng_state()},
                        d / "hf.pt")

    def restore(self, d: pathlib.Path) -> None:
        ck = self.torch.load(d / "hf.pt", weights_only=True)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.torch.set_rng_state(ck["rng"])

    def eval_sums(self, b: dict[str, np.ndarray]) -> dict[str, float]:
        """The sums of losses.mlm_sums / nsp_sums, from HF's logits at the same positions."""
        t = self.torch
        self.model.eval()
        with t.no_grad():
            out = self.model(**self._inputs(b))
        self.model.train()
        pos = t.from_numpy(b["masked_positions"]).long()
        logits = t.gather(out.prediction_logits, 1,
                          pos[..., None].expand(-1, -1, out.prediction_logits.shape[-1]))
        ids = t.from_numpy(b["masked_ids"]).long()
        w = t.from_numpy(b["masked_weights"]).float()
        ce = t.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        nsp = t.from_numpy(b["nsp_labels"]).long()
        nsp_ce = t.nn.functional.cross_entropy(out.seq_relationship_logits, nsp,
                                               reduction="none")
        return {"mlm_loss": float((ce * w).sum()),
                "mlm_correct": float(((logits.argmax(-1) == ids).float() * w).sum()),
                "mlm_weight": float(w.sum()),
                "nsp_loss": float(nsp_ce.sum()),
                "nsp_correct": float((out.seq_relationship_logits.argmax(-1) == nsp).float()
                                     .sum()),
                "nsp_weight": float(nsp.numel())}


def load_weights(model, flat: dict[str, np.ndarray]) -> None:
    """Our canonical params into the HF model; every HF parameter must be covered."""
    import torch
    sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in hf_format.to_hf(flat).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # The decoder is tied to the word embeddings / cls.predictions.bias.
    missing = [k for k in missing if not k.startswith("cls.predictions.decoder.")]
    if missing or unexpected:
        raise SystemExit(f"HF weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    dec = model.cls.predictions.decoder
    emb = model.bert.embeddings.word_embeddings.weight
    if dec.weight.data_ptr() != emb.data_ptr():
        raise SystemExit("HF model: the MLM decoder is not tied to the word embeddings")


def _select(b: dict[str, np.ndarray], keys) -> dict[str, np.ndarray]:
    return {k: b[k] for k in keys}


# ---- Runs -------------------------------------------------------------------------------


def evaluate(contender, batches: list[dict[str, np.ndarray]], desc: str) -> dict[str, float]:
    acc: dict[str, float] = {}
    for b in tqdm(batches, desc=desc, leave=False):
        for k, v in contender.eval_sums(b).items():
            acc[k] = acc.get(k, 0.0) + v
    return summarize(acc)


def train_alternating(contenders: dict, batches: list[dict[str, np.ndarray]], chunk: int,
                      ckpt: pathlib.Path, every: int, settings: dict) -> dict:
    """Each contender runs steps [i, i + chunk) in turn, so load from other users
    hits both. Records wall time per contender and the 1-minute load average at
    every turn. The first step after each (re)start (our jit compile) is timed on
    its own. Every `every` steps both states go to `ckpt`; a rerun with the same
    settings continues from there (on a shared machine a run can get killed)."""
    prog = restore_progress(ckpt, contenders, settings) or {
        "next": 0, "loads": [], "restarts": 0,
        "runs": {n: {"losses": [], "wall_s": 0.0, "first_step_s": []} for n in contenders}}
    first = prog["next"]
    out = prog["runs"]
    with tqdm(total=len(batches) * len(contenders), initial=first * len(contenders),
              desc="train", unit="step") as bar:
        for start in range(first, len(batches), chunk):
            prog["loads"].append(os.getloadavg()[0] if hasattr(os, "getloadavg")
                                 else float("nan"))
            end = min(start + chunk, len(batches))
            for name, c in contenders.items():
                spans = [(start, start + 1), (start + 1, end)] if start == first else [
                    (start, end)]
                for a, z in spans:
                    t0 = time.perf_counter()
                    for b in batches[a:z]:
                        c.step(b)
                    out[name]["losses"] += c.sync()
                    dt = time.perf_counter() - t0
                    out[name]["wall_s"] += dt
                    if a == first:
                        out[name]["first_step_s"].append(dt)
                    bar.update(z - a)
                bar.set_postfix({n: f"{o['losses'][-1]:.3f}" for n, o in out.items()
                                 if o["losses"]}, refresh=False)
            prog["next"] = end
            if end % every == 0 and end < len(batches):
                save_progress(ckpt, contenders, prog, settings)
    for o in out.values():
        steady = o["wall_s"] - sum(o["first_step_s"])
        n = len(o["losses"]) - len(o["first_step_s"])
        o["steps_per_s"] = n / steady if steady > 0 else float("nan")
    return prog


def save_progress(ckpt: pathlib.Path, contenders: dict, prog: dict, settings: dict) -> None:
    """ckpt/step-N: both states + progress.json, built under a temp name and renamed,
    then older steps removed (a killed save is never picked up)."""
    final = ckpt / f"step-{prog['next']}"
    tmp = ckpt / f".step-{prog['next']}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    for c in contenders.values():
        c.save(tmp)
    (tmp / "progress.json").write_text(json.dumps({"settings": settings, **prog}))
    os.replace(tmp, final)
    for old in ckpt.glob("step-*"):
        if old != final:
            shutil.rmtree(old)


def restore_progress(ckpt: pathlib.Path, contenders: dict, settings: dict) -> dict | None:
    steps = sorted((int(p.name[5:]), p) for p in ckpt.glob("step-*") if p.name[5:].isdigit())
    if not steps:
        return None
    d = steps[-1][1]
    prog = json.loads((d / "progress.json").read_text())
    saved = prog.pop("settings")
    if saved != settings:
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        raise SystemExit(f"{d}: saved with other settings (saved, now): {diff}; use another "
                         "--tag or delete the directory")
    for c in contenders.values():
        c.restore(d)
    prog["restarts"] += 1
    print(f"resuming from {d} at step {prog['next']}", file=sys.stderr, flush=True)
    return prog


def initial_parity(ours: Ours, hf: HF, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Held-out metrics of the untrained models on one batch: equal weights must
    give equal losses (no dropout in evaluation)."""
    a, b = summarize(ours.eval_sums(batch)), summarize(hf.eval_sums(batch))
    return {f"{k}_{n}": d[k] for k in ("mlm_loss", "nsp_loss") for n, d in (("ours", a),
                                                                             ("hf", b))}


def loss_gap(a: list[float], b: list[float]) -> dict[str, float]:
    a, b = np.asarray(a), np.asarray(b)
    d = np.abs(a - b)
    n = min(100, len(a))
    return {"max_abs_diff": float(d.max()), "first10_max_abs_diff": float(d[:10].max()),
            "last100_mean_ours": float(a[-n:].mean()), "last100_mean_hf": float(b[-n:].mean())}


def report(res: dict) -> str:
    o, h = res["eval"]["ours"], res["eval"]["hf"]
    tr = res["train"]
    rows = [
        ["held-out MLM accuracy", f"{o['mlm_accuracy']:.4f}", f"{h['mlm_accuracy']:.4f}",
         f"{100 * (o['mlm_accuracy'] - h['mlm_accuracy']):+.2f} pt"],
        ["held-out MLM loss", f"{o['mlm_loss']:.4f}", f"{h['mlm_loss']:.4f}",
         f"{o['mlm_loss'] - h['mlm_loss']:+.4f}"],
        ["held-out MLM perplexity", f"{o['mlm_perplexity']:.2f}", f"{h['mlm_perplexity']:.2f}",
         f"{o['mlm_perplexity'] - h['mlm_perplexity']:+.2f}"],
        ["held-out NSP accuracy", f"{o['nsp_accuracy']:.4f}", f"{h['nsp_accuracy']:.4f}",
         f"{100 * (o['nsp_accuracy'] - h['nsp_accuracy']):+.2f} pt"],
        [f"train loss, mean of last {min(100, len(tr['ours']['losses']))} steps", f"{res['loss_gap']['last100_mean_ours']:.4f}",
         f"{res['loss_gap']['last100_mean_hf']:.4f}",
         f"{res['loss_gap']['last100_mean_ours'] - res['loss_gap']['last100_mean_hf']:+.4f}"],
        ["train wall time (s)", f"{tr['ours']['wall_s']:.0f}", f"{tr['hf']['wall_s']:.0f}",
         f"{tr['hf']['wall_s'] / tr['ours']['wall_s']:.2f}x hf/ours"],
        ["steps/s (after step 1)", f"{tr['ours']['steps_per_s']:.3f}",
         f"{tr['hf']['steps_per_s']:.3f}",
         f"{tr['ours']['steps_per_s'] / tr['hf']['steps_per_s']:.2f}x ours/hf"],
        ["first step incl. compile (s)", f"{tr['ours']['first_step_s'][0]:.1f}",
         f"{tr['hf']['first_step_s'][0]:.1f}",
         f"{res['restarts']} restart(s)" if res["restarts"] else ""],
    ]
    return markdown_table(["", "ours (bert_jax)", "HF BertForPreTraining", "ours - HF"], rows)


def write_json(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--size", default="mini", help="BertConfig.named size")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--eval-batches", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=25, help="steps per turn when alternating")
    ap.add_argument("--seed", type=int, default=0, help="init, dropout and data seed")
    ap.add_argument("--eval-seed", type=int, default=1234, help="held-out masking seed")
    ap.add_argument("--save-every", type=int, default=100,
                    help="steps between resumable saves of both states (multiple of --chunk)")
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="corpus preparation processes")
    ap.add_argument("--workdir", default="runs/pretrain_peer")
    ap.add_argument("--tag", default="", help="results-<tag>.json (default from the settings)")
    args = ap.parse_args()
    for name in ("steps", "batch", "eval_batches", "chunk", "vocab_size", "torch_threads",
                 "save_every"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.save_every % args.chunk:
        ap.error(f"--save-every={args.save_every}: must be a multiple of --chunk={args.chunk}")
    if not 0.0 <= args.dropout < 1.0:
        ap.error(f"--dropout={args.dropout}: must be in [0, 1)")
    if not 0.0 <= args.warmup_ratio < 1.0:
        ap.error(f"--warmup-ratio={args.warmup_ratio}: must be in [0, 1)")
    return args


def main() -> None:
    args = parse_args()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    data = build_data(workdir, args.vocab_size, args.workers)

    train_pipe = open_pipeline(data["train"], args.batch, args.seed)
    train_batches = draw_batches(train_pipe, args.steps, "train batches")
    eval_batches = draw_batches(open_pipeline(data["heldout"], args.batch, args.eval_seed),
                                args.eval_batches, "held-out batches")

    cfg = BertConfig.named(args.size, vocab_size=train_pipe.tokenizer.vocab_size,
                           hidden_dropout_prob=args.dropout,
                           attention_probs_dropout_prob=args.dropout)
    optim = ConfigDict(dict(name="adamw", lr=args.lr, warmup_ratio=args.warmup_ratio,
                            weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
    ours = Ours(cfg, optim, args.steps, args.seed)
    lrs = np.asarray(jax.vmap(ours.schedule)(jnp.arange(args.steps)), np.float64)
    hf = HF(cfg, ours.initial_params(), optim, lrs, args.torch_threads, args.seed)
    parity = initial_parity(ours, hf, eval_batches[0])
    print("initial held-out batch 0: " + ", ".join(f"{k}={v:.6f}" for k, v in parity.items()),
          file=sys.stderr, flush=True)

    tag = args.tag or f"s{args.steps}-b{args.batch}-lr{args.lr:g}-d{args.dropout:g}"
    settings = {k: v for k, v in vars(args).items()
                if k not in ("workers", "tag", "workdir", "eval_batches", "eval_seed",
                             "save_every")}
    t0 = time.perf_counter()
    prog = train_alternating({"ours": ours, "hf": hf}, train_batches, args.chunk,
                             workdir / f"ckpt-{tag}", args.save_every, settings)
    train, loads = prog["runs"], prog["loads"]
    import torch
    import transformers
    res = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "args": vars(args), "data": data, "model": cfg.to_dict(), "optim": optim.to_dict(),
        "initial_parity": parity, "train": train,
        "loss_gap": loss_gap(train["ours"]["losses"], train["hf"]["losses"]),
        "load_average_before": load_before, "load_average_after": load_average(),
        "load_1min_during_training": loads, "restarts": prog["restarts"],
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "cpus": os.cpu_count(),
    }
    path = workdir / f"results-{tag}.json"
    write_json(path, res)  # training done: keep it even if evaluation fails
    res["eval"] = {"ours": evaluate(ours, eval_batches, "eval ours"),
                   "hf": evaluate(hf, eval_batches, "eval hf")}
    res["bench_wall_s"] = time.perf_counter() - t0
    res["load_average_after"] = load_average()
    write_json(path, res)

    print()
    print(report(res))
    print(f"\nbert_{args.size} (vocab {cfg.vocab_size}), {args.steps} steps, batch {args.batch}, "
          f"seq 128, 20 predictions, lr {args.lr:g} (warmup {args.warmup_ratio:g}), dropout "
          f"{args.dropout:g}, fp32; held-out: {args.eval_batches} batches of "
          f"{len(data['heldout_novels'])} unseen novels.")
    print(f"train loss |ours - hf|: first 10 steps max {res['loss_gap']['first10_max_abs_diff']:.2e}"
          f", all steps max {res['loss_gap']['max_abs_diff']:.3f}")
    print(f"load average before: {load_before}, during training (1 min) median "
          f"{np.median(loads):.1f} max {max(loads):.1f}, after: {res['load_average_after']}; "
          f"wrote {path}")


if __name__ == "__main__":
    main()

"""Ahead-of-time compilation for TPU slices (bert_jax.aot), with no TPU.

The compile tests need libtpu (the `tpu` extra, installed by `make test`); they
skip with that reason where it is absent. The rest checks what the compiled
report is built from against independent references: real pipeline batches,
optax's own optimizer-state mapping and hand-counted HLO collectives.
"""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import optax
import pytest

from bert_jax import aot
from bert_jax.data.pipeline import PretrainingPipeline, batch_spec, default_data_config
from bert_jax.model import sharding
from bert_jax.model.config import BertConfig
from bert_jax.model.heads import BertForPreTraining
from bert_jax.tpu import hlo, report_text, topology
from bert_jax.train.optim import build_optimizer
from bert_jax.train.step import state_spec

REPO = pathlib.Path(__file__).resolve().parents[1]

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu absent: pip install -e '.[tpu]'")


@pytest.mark.parametrize("kind", ["padded", "packed", "dense", "mlm_only"])
def test_batch_spec_matches_real_batches(tiny_pretraining_data, kind):
    cfg = default_data_config()
    cfg.prepared_dir = str(tiny_pretraining_data["train"])
    cfg.max_seq_length = 48
    cfg.max_predictions_per_seq = 7
    cfg.packing = 3 if kind == "packed" else 0
    cfg.dense_labels = kind == "dense"
    cfg.nsp = kind != "mlm_only"
    pipe = PretrainingPipeline.from_config(cfg, global_batch_size=6)
    real = pipe.batch(0)
    spec = batch_spec(cfg, 6)
    assert sorted(spec) == sorted(real)
    for k, v in real.items():
        assert spec[k] == (v.shape, v.dtype), k


def test_optimizer_shardings_equal_optax_mapping():
    """Our structural mapping (no eager init, so it works on topology devices)
    gives what optax.tree_map_params gives on real devices."""
    from flax import nnx
    from ml_collections import ConfigDict
    cfg = BertConfig.named("tiny", vocab_size=100, num_hidden_layers=1)
    mesh = sharding.make_mesh((2, 2, 2))
    for name in ("adamw", "lamb"):
        opt, _ = build_optimizer(ConfigDict(dict(name=name, lr=1e-3, warmup_steps=1,
                                                 weight_decay=0.01, clip_norm=1.0)), 10)
        with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
            spec = state_spec(lambda k: BertForPreTraining(cfg, rngs=nnx.Rngs(k)),
                                       opt, mesh)
        abs_opt = jax.eval_shape(opt.init, spec.abstract["params"])
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        ref = optax.tree_map_params(opt, lambda _, s: s, abs_opt, spec.shardings["params"],
                                    transform_non_params=lambda _, r=rep: r)
        assert jax.tree.leaves(ref) == jax.tree.leaves(spec.shardings["opt_state"]), name
        assert any(s.spec != rep.spec for s in jax.tree.leaves(ref))


HLO = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], bf16[4,256])) -> (s32[], bf16[4,256]) {
  %p = (s32[], bf16[4,256]) parameter(0)
  %x = bf16[4,256]{1,0} get-tuple-element(%p), index=1
  %ag-start = (bf16[4,256]{1,0}, bf16[16,256]{1,0}) all-gather-start(%x), dimensions={0}
  %ag = bf16[16,256]{1,0} all-gather-done(%ag-start)
  %rs = bf16[4,256]{1,0} reduce-scatter(%ag), dimensions={0}, to_apply=%add
  ROOT %t = (s32[], bf16[4,256]) tuple(%i, %rs)
}

%cond (p: (s32[], bf16[4,256])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

%body2 (q: (s32[], f32[8])) -> (s32[], f32[8]) {
  %q = (s32[], f32[8]) parameter(0)
  %y = f32[8]{0} get-tuple-element(%q), index=1
  %a2a = f32[8]{0} all-to-all(%y), dimensions={0}
  ROOT %t2 = (s32[], f32[8]) tuple(%j, %a2a)
}

%cond2 (q: (s32[], f32[8])) -> pred[] {
  %bound = s32[]{:T(128)} constant(5)
  %q = (s32[], f32[8]) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%q), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %bound), direction=LT
}

ENTRY %main (x: f32[1024]) -> f32[1024] {
  %x = f32[1024]{0} parameter(0)
  %ar = f32[1024]{0} all-reduce(%x), replica_groups={}, to_apply=%add
  %ars = (f32[256]{0:T(256)}, /*index=1*/bf16[64,8]{1,0:T(8,128)(2,1)}) all-reduce-start(%p1, %p2), to_apply=%add
  %ard = (f32[256]{0}, bf16[64,8]{1,0}) all-reduce-done(%ars)
  %w = (s32[], bf16[4,256]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %w2 = (s32[], f32[8]) while(%init2), condition=%cond2, body=%body2
  ROOT %cp = f32[1024]{0} collective-permute(%ar), source_target_pairs={{0,1}}
}
"""


def test_collectives_counted_per_loop_trip():
    c = hlo.collectives(HLO)
    # The plain one, and a combined async one: both of its buffers count.
    assert c["all-reduce"] == {"count": 2, "bytes": 4096 + 256 * 4 + 64 * 8 * 2}
    assert c["collective-permute"] == {"count": 1, "bytes": 4096}
    # Inside the 12-trip loop: the gather's result (16x256 bf16) and the scatter's.
    assert c["all-gather"] == {"count": 12, "bytes": 12 * 16 * 256 * 2}
    assert c["reduce-scatter"] == {"count": 12, "bytes": 12 * 4 * 256 * 2}
    # No known_trip_count (as the TPU compiler leaves scans): the bound of the
    # condition's `i < 5` gives the trips.
    assert c["all-to-all"] == {"count": 5, "bytes": 5 * 8 * 4}


def test_topology_names():
    assert topology.topology_kwargs("v5p-1024") == (
        "v5p", {"topology_name": "v5p:8x8x8", "chip_config_name": "megacore"})
    assert topology.topology_kwargs("v5e:4x4") == ("v5e", {"topology_name": "v5e:4x4"})
    assert topology.topology_kwargs("v6e-8")[1]["chips_per_host_bounds"] == (2, 4, 1)
    with pytest.raises(ValueError, match="--topology=v7x:2x2"):
        topology.topology_kwargs("v7x:2x2")
    with pytest.raises(ValueError, match="unknown size 12"):
        topology.topology_kwargs("v5e-12")


def _tiny_pretrain_config():
    from configs.pretrain import bert_tiny
    c = bert_tiny.get_config()
    c.mesh.shape = (2, 4, 2)
    c.global_batch_size = 64
    # Without dropout: XLA counts the random-bit generation as FLOPs (threefry's
    # hash is +20% of bert_tiny's matmuls), which no model-FLOPs formula holds.
    c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
    return c


@needs_libtpu
def test_pretraining_step_compiles_for_multi_host_tpu_slice():
    """bert_tiny pretraining, v5e:4x4 = 16 chips on 4 hosts, (data, fsdp, tensor)
    = (2, 4, 2): every axis used, so parameters, optimizer state and batch are
    all sharded and the program needs all-gathers and reductions."""
    r = aot.report(_tiny_pretrain_config(), "v5e:4x4")
    assert (r["num_devices"], r["num_hosts"], r["device_kind"]) == (16, 4, "TPU v5 lite")
    assert r["mesh"] == {"data": 2, "fsdp": 4, "tensor": 2}
    assert r["per_host_batch_rows"] == 64 // 4
    b = r["bytes_per_device"]
    assert 0 < b["peak"] < r["hbm_bytes_per_device"] == 16 * 2**30 and r["fits"]
    # The donated state is aliased: parameters + Adam moments do not count twice.
    assert b["aliased"] > 0
    assert r["collectives"]["all-gather"]["count"] > 0
    assert r["collectives"]["all-reduce"]["count"] + r["collectives"]["reduce-scatter"][
        "count"] > 0
    # XLA counts every FLOP of the program, flops.py only the matmuls: the gap
    # is the element-wise work (softmax, LayerNorm, GELU, AdamW).
    assert 0.97 < r["flops_xla_over_formula"] < 1.10, r["flops_xla_over_formula"]
    assert r["estimated_step_seconds"] > 0 and 0 < r["estimated_mfu"] < 1


@needs_libtpu
def test_finetuning_step_with_splash_attention_compiles_for_tpu():
    """A SQuAD step on the same slice, with the Pallas splash kernel compiled by
    Mosaic for TPU (not interpret mode) inside shard_map."""
    from configs.finetune import squad
    c = squad.get_config()
    c.max_seq_length = 128
    c.global_batch_size = 32
    c.rng_impl = "rbg"  # the other dropout RNG (3x cheaper compile, see docs/tpu.md)
    with c.unlocked():
        c.mesh = {"shape": (4, 2, 2)}
        c.model = {"attention_impl": "splash", "attention_probs_dropout_prob": 0.0}
    r = aot.report(c, "v5e:4x4", model_size="tiny")
    assert r["fits"] and r["per_host_batch_rows"] == 8
    assert r["mesh"] == {"data": 4, "fsdp": 2, "tensor": 2}


def _fake_search(monkeypatch, peak_of, oom_above=None, mesh=(2, 4, 1), **overrides):
    """find_batch on 8 CPU devices with a made-up memory curve instead of compiles."""
    compiles = []

    def fake_compile(prog, mesh):
        compiles.append(prog.global_batch)
        peak = peak_of(prog.global_batch)
        return {"oom": oom_above is not None and peak > oom_above,
                "bytes_per_device": {"peak": peak}, "compile_seconds": 0.0}

    monkeypatch.setattr(aot, "topology_devices", lambda name: ("v5e", jax.devices()))
    monkeypatch.setattr(aot, "compile_program", fake_compile)
    monkeypatch.setattr(aot, "vocab_size_of", lambda config: 128)
    c = _tiny_pretrain_config()
    c.mesh.shape = mesh
    for k, v in overrides.items():
        setattr(c, k, v)
    best, info = aot.find_batch(c, "v5e-8")
    return best, info, compiles


def test_find_batch_finds_the_largest_fitting_multiple(monkeypatch):
    """The search on a memory line with a known answer: peak = 2 GiB + 37 MiB per
    row on 16 GiB chips, batch in steps of 8 (data x fsdp): the largest fitting
    batch is 8 * floor((16 GiB - 2 GiB) / 37 MiB / 8) = 384, found in few compiles,
    and both sides of it compiled (384 fits, 392 does not)."""
    best, info, compiles = _fake_search(
        monkeypatch, lambda b: 2 * 2**30 + b * 37 * 2**20, oom_above=20 * 2**30)
    want = 8 * ((14 * 2**30) // (37 * 2**20) // 8)
    assert (best, want) == (384, 384)
    assert info["unit"] == 8 and len(compiles) <= 6, compiles
    assert info["bracket"] == [384, 392] and 392 in compiles and not info["stopped"]
    assert info["line_limit"] == 384
    assert abs(info["memory_line"]["b_bytes_per_row"] - 37 * 2**20) < 1
    text = report_text.format_find_batch(best, info)
    assert text.startswith("largest global batch that fits: 384 (multiples of 8; 5 compiles")
    assert "bracket closed: 384 fits, 392 does not" in text


@pytest.mark.parametrize("flag, message", [
    ("--hbm_gib=0", "error: --hbm_gib=0.0: expected a positive number of GiB"),
    ("--max_batch=0", "error: --max_batch=0: expected >= 1")])
def test_find_batch_flags_are_checked_before_compiling(monkeypatch, capsys, flag, message):
    monkeypatch.setattr(aot, "topology_devices", lambda name: pytest.fail("compiled"))
    rc = aot.main(["aot", f"--config={REPO / 'configs/pretrain/bert_tiny.py'}", "--topology=v4-8",
                   "--find_batch", flag])
    assert rc == 2 and capsys.readouterr().err.splitlines() == [message]


def test_find_batch_brackets_a_far_limit_without_overshooting(monkeypatch):
    """The tiny-model case: 0.06 GiB at batch 64 of a 16 GiB chip puts the limit
    near 17,000 rows; the search grows (at most 16x a step) to a batch that does
    not fit and closes the bracket, instead of stopping at a small fitting batch.
    Memory that is not quite linear (a step at 8192 rows, as when the compiler
    changes a layout) still ends at the exact largest fit."""
    def peak(b):
        return 2**30 // 32 + b * 2**20 + (2**28 if b >= 8192 else 0)
    best, info, compiles = _fake_search(monkeypatch, peak)
    want = (16 * 2**30 - 2**30 // 32 - 2**28) // 2**20 // 8 * 8
    assert best == want and peak(best) <= 16 * 2**30 < peak(best + 8)
    assert info["bracket"] == [best, best + 8] and len(compiles) <= 8, compiles
    grown = sorted(compiles)
    assert all(b2 <= 16 * b1 for b1, b2 in zip(grown, grown[1:]))


def test_find_batch_units_and_a_start_that_does_not_fit(monkeypatch):
    """With grad accumulation every micro-batch splits over data x fsdp: the
    valid batches are multiples of 8 x 2 = 16. A start (64) that does not fit
    halves until one does, then the bracket closes."""
    best, info, compiles = _fake_search(
        monkeypatch, lambda b: 2**30 + b * 2**28, oom_above=16 * 2**30, grad_accum_steps=2)
    assert info["unit"] == 16 and compiles[0] == 64
    assert best == (15 * 2**30) // 2**28 // 16 * 16 == 48
    assert info["bracket"] == [48, 64]
    best, info, compiles = _fake_search(monkeypatch, lambda b: 17 * 2**30)
    assert best == 0 and info["bracket"] == [0, 8] and compiles == [64, 32, 16, 8]


@needs_libtpu
def test_find_batch_on_tpu_compiles_agrees_with_its_memory_line():
    """A real search: bert_tiny (L2/H128, seq 128) compiled for v4-8 (4 megacore
    chips, batch in steps of 4) under a 128 MiB per-chip limit (`hbm_bytes`,
    the --hbm_gib flag; parameters and Adam moments take 50 of it), so the
    answer is about a hundred rows and every compile is of a small batch. The
    answer fits, the next valid batch was compiled and does not, and a line
    fitted here (scipy) through the compiles it made puts the limit within 5%
    of the answer."""
    from scipy import stats
    c = _tiny_pretrain_config()
    c.mesh.shape = (-1, 1, 1)
    c.global_batch_size = 128  # the search starts here: one compile fewer than from 64
    limit = 2**27
    best, info = aot.find_batch(c, "v4-8", hbm_bytes=limit)
    tried = {int(b): m for b, m in info["tried"].items()}
    # 5 compiles on the first run: 128, 256 (past the limit), then the
    # bracket closing at 144, 140, 136.
    assert info["unit"] == 4 and not info["stopped"], info
    assert info["compiles"] <= 8, info["order"]
    assert info["dtype"] == "compute float32, params float32"
    assert tried[best] <= limit
    assert best + 4 in tried and (tried[best + 4] is None or tried[best + 4] > limit)
    pts = sorted((b, m) for b, m in tried.items() if m is not None)
    fit = stats.linregress([b for b, _ in pts], [m for _, m in pts])
    predicted = (limit - fit.intercept) / fit.slope
    assert abs(best - predicted) <= 0.05 * best, (best, predicted, pts)


@needs_libtpu
def test_batch_not_dividing_the_slice_is_one_line_before_compiling():
    """The default phase-1 batch (256) on a 512-chip fsdp mesh: one line naming
    the field and the mesh, exit 2, instead of JAX's sharding error."""
    proc = subprocess.run(
        [sys.executable, "-m", "bert_jax.aot",
         "--config=configs/pretrain/bert.py:size=large,phase=1", "--topology=v5p:8x8x8",
         "--config.mesh.shape=1,-1,1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [x for x in proc.stderr.splitlines() if x.startswith("error:")] == [
        "error: config.global_batch_size=256: expected a multiple of 512, the batch shards "
        "of mesh (data 1 x fsdp 512) on 512 devices"]
    assert "Compiling" not in proc.stderr

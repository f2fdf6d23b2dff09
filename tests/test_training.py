"""The shared train step on 8 fake CPU devices (in process): one pretraining
step gives the same loss, gradient norm and updated parameters on every mesh
shape and on a single device, with the parameters and optimizer state really
sharded; gradient accumulation of 4 x 8 rows equals one batch of 32.

Dropout is off here so that the accumulation comparison is exact (micro-batches
draw their own dropout masks); the multi-process CLI test in test_pretrain.py
runs with dropout on.
"""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from bert_jax.model import sharding
from bert_jax.model.heads import BertForPreTraining
from bert_jax.train import pretrain_job
from bert_jax.train.optim import build_optimizer
from bert_jax.train.step import global_batch, init_state, jit_train_step, state_spec

BATCH = 32


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """XLA backend optimizations off for this module's compiles: half the compile
    time; sharding and partitioning (what is under test) are unchanged."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), "one device"]


def tiny_config(prepared_dir):
    from configs.pretrain import bert_tiny
    c = bert_tiny.get_config("runlocal")
    c.data.prepared_dir = str(prepared_dir)
    c.data.max_seq_length, c.data.max_predictions_per_seq = 32, 5
    # One layer: every kind of parameter and collective, at the least compile time.
    c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 1, 2
    c.model.intermediate_size = 64
    c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
    c.optim.warmup_steps = 0  # a non-zero learning rate from step 0 on
    c.global_batch_size = BATCH
    return c


@pytest.fixture(scope="module")
def setup(tiny_pretraining_data):
    config = tiny_config(tiny_pretraining_data["train"])
    pipe = pretrain_job.open_pipeline(config.data, BATCH)
    cfg = pretrain_job.bert_config(config, pipe.tokenizer.vocab_size)
    optimizer, schedule = build_optimizer(config.optim, 10)

    def model_fn(key):
        return BertForPreTraining(cfg, rngs=nnx.Rngs(params=key))

    mesh = sharding.make_mesh((8, 1, 1))
    with jax.set_mesh(mesh):
        spec = state_spec(model_fn, optimizer, mesh)
        init = jax.device_get(init_state(spec, model_fn, optimizer, seed=0))
    batches = [pipe.batch(0), pipe.batch(1)]
    return dict(model_fn=model_fn, optimizer=optimizer, schedule=schedule, init=init,
                batches=batches, objective=pretrain_job.pretraining_objective(True, True),
                steps={})


def make_mesh(shape):
    if shape == "one device":
        return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return sharding.make_mesh(shape)


def compiled(setup, shape, accum_steps=1):
    """(mesh, spec, jitted step) for a mesh shape, built once per module."""
    key = (shape, accum_steps)
    if key not in setup["steps"]:
        mesh = make_mesh(shape)
        with jax.set_mesh(mesh):
            spec = state_spec(setup["model_fn"], setup["optimizer"], mesh)
        step_fn = jit_train_step(spec, mesh, setup["objective"], setup["optimizer"],
                                          setup["schedule"], accum_steps)
        setup["steps"][key] = (mesh, spec, step_fn)
    return setup["steps"][key]


def run_steps(setup, shape, batches=None, accum_steps=1):
    """Train steps from the shared initial state on a mesh: per-step metrics,
    the state after the first step (on the host) and the state's shardings."""
    mesh, spec, step_fn = compiled(setup, shape, accum_steps)
    with jax.set_mesh(mesh):
        state = jax.device_put(setup["init"], spec.shardings)
        shardings = jax.tree.map(lambda x: x.sharding, state)
        metrics, after_one = [], None
        for local in batches or setup["batches"]:
            state, m = step_fn(state, global_batch(local, mesh), jax.random.key(1))
            metrics.append(jax.device_get(m))
            if after_one is None:
                after_one = jax.device_get(state)
    return metrics, after_one, shardings


@pytest.fixture(scope="module")
def runs(setup):
    return {shape: run_steps(setup, shape) for shape in MESHES}


def _close(a, b, rtol=1e-5, atol=0.0):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


def assert_same_run(run, ref, atol_params=1e-5):
    """Same metrics (relative 1e-5) for both steps and the same parameters after
    the first. Parameters get atol = 1% of the learning rate: Adam divides by
    sqrt(v) + 1e-6, so a coordinate whose gradient is ~1e-6 turns last-bit
    differences of a reduction order into a visible fraction of its lr step."""
    (m, state, _), (m_ref, state_ref, _) = run, ref
    for step in range(2):
        for key in ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "grad_norm", "update_norm"):
            _close(m[step][key], m_ref[step][key])
        assert m[step]["finite"] == 1.0
    jax.tree.map(lambda a, b: _close(a, b, rtol=1e-5, atol=atol_params),
                 state["params"], state_ref["params"])


@pytest.mark.parametrize("shape", MESHES[1:], ids=str)
def test_one_step_same_on_every_mesh(runs, shape):
    reference = runs[(8, 1, 1)]
    # The run learns: the second step's loss differs from the first.
    assert reference[0][1]["loss"] != reference[0][0]["loss"]
    assert reference[0][0]["update_norm"] > 0
    assert_same_run(runs[shape], reference)


def _param(tree, *path):
    for k in path:
        tree = tree[k]
    return tree


@pytest.mark.parametrize("shape,embedding_shard,kernel_shard", [
    ((2, 4, 1), (2000, 8), (8, 64)),        # FSDP: embed split in 4
    ((2, 2, 2), (1000, 16), (16, 32)),      # FSDP x tensor: vocab / mlp split too
])
def test_params_and_optimizer_state_are_sharded(runs, shape, embedding_shard, kernel_shard):
    _, _, shardings = runs[shape]
    emb = ("bert", "embeddings", "word_embeddings", "embedding")
    ffn = ("bert", "encoder", "layers", 0, "intermediate", "kernel")
    for tree in (shardings["params"], shardings["opt_state"][1][0].mu):
        s_emb, s_ffn = _param(tree, *emb), _param(tree, *ffn)
        assert s_emb.spec == P("tensor", "fsdp") and s_ffn.spec == P("fsdp", "tensor")
        assert s_emb.shard_shape((2000, 32)) == embedding_shard
        assert s_ffn.shard_shape((32, 64)) == kernel_shard
    # Pure data parallel keeps whole copies.
    s = _param(runs[(8, 1, 1)][2]["params"], *emb)
    assert s.shard_shape((2000, 32)) == (2000, 32)


def test_gradient_accumulation_equals_full_batch(setup, runs):
    accumulated = run_steps(setup, (8, 1, 1), accum_steps=4)
    assert_same_run(accumulated, runs[(8, 1, 1)])


def test_non_finite_step_leaves_state_unchanged(setup):
    """A NaN in the batch (here a masked-LM weight) reports finite=0 and keeps
    the parameters and optimizer state of before the step."""
    poisoned = {k: v.copy() for k, v in setup["batches"][0].items()}
    poisoned["masked_weights"][3, 0] = np.nan
    [m], state, _ = run_steps(setup, (8, 1, 1), batches=[poisoned])
    assert m["finite"] == 0.0 and not np.isfinite(m["loss"])
    assert state["step"] == 1
    jax.tree.map(np.testing.assert_array_equal, state["params"], setup["init"]["params"])
    jax.tree.map(np.testing.assert_array_equal, state["opt_state"], setup["init"]["opt_state"])

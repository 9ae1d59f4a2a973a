"""The model registry and every preset: shapes, exact parameter counts, BatchNorm, dropout, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.errors import JaxcnnError

# Parameter counts derived by hand at each preset's default input; a conv is k·k·in·out (+out bias),
# a Dense in·out + out, a BatchNorm 2·C (scale, bias; its mean and var are batch_stats, not params).
EXPECTED_PARAMS = {
    # 784·512 + 512 = 401,920; 512·10 + 10 = 5,130
    "mlp": 407_050,
    # conv 3·3·1·8 + 8 = 80; 28→26→pool 13: 13·13·8·10 + 10 = 13,530
    "tiny_cnn": 13_610,
    # conv 3·3·1·32 + 32 = 320; conv 3·3·32·64 + 64 = 18,496; 28→14→7 (SAME, avg-pool 2):
    # 7·7·64·256 + 256 = 803,072; 256·10 + 10 = 2,570
    "cnn": 824_458,
    # input padded to 32: conv 5·5·1·6 + 6 = 156 (→28, pool 14); conv 5·5·6·16 + 16 = 2,416
    # (→10, pool 5); 5·5·16·120 + 120 = 48,120; 120·84 + 84 = 10,164; 84·10 + 10 = 850
    "lenet5": 61_706,
    # bias-free convs 3·3·(3·64 + 64·64 + 64·128 + 128·128 + 128·256 + 256·256) = 1,144,512;
    # BN 2·(64 + 64 + 128 + 128 + 256 + 256) = 1,792; 32→4 after 3 pools: 4·4·256·512 + 512 = 2,097,664;
    # 512·10 + 10 = 5,130
    "vgg": 3_249_098,
    # stem 3·3·3·16 + BN 32 = 464; stage 1: 3 blocks · 2·(3·3·16·16 + 32) = 14,016;
    # stage 2: first block 3·3·16·32 + 64 + 3·3·32·32 + 64 + shortcut 16·32 + 64 = 14,528,
    #   two more 2·(9,216 + 64) each → 14,528 + 37,120 = 51,648;
    # stage 3: 3·3·32·64 + 128 + 3·3·64·64 + 128 + 32·64 + 128 = 57,728,
    #   two more 2·(36,864 + 128) each → 57,728 + 147,968 = 205,696;
    # Dense 64·10 + 10 = 650
    "resnet20": 272_474,
    # stem 3·3·3·64 + 128 = 1,856; stage 1: 2 blocks · 2·(3·3·64·64 + 128) = 147,968;
    # stage 2: 73,728 + 256 + 147,456 + 256 + 8,192 + 256 = 230,144, + 2·(147,456 + 256) = 525,568;
    # stage 3: 294,912 + 512 + 589,824 + 512 + 32,768 + 512 = 919,040,
    #   + 2·(589,824 + 512) = 2,099,712;
    # stage 4: 1,179,648 + 1,024 + 2,359,296 + 1,024 + 131,072 + 1,024 = 3,673,088,
    #   + 2·(2,359,296 + 1,024) = 8,393,728;
    # Dense 512·10 + 10 = 5,130
    "resnet18": 11_173_962,
}
BATCH_NORM_PRESETS = {"vgg", "resnet20", "resnet18"}


def abstract_init(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2):
    """Variables and eval-mode logits as shapes only: the real code traced, nothing computed."""
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return variables, jax.eval_shape(model.apply, variables, x)


def run_modes(model: nn.Module, x: jax.Array) -> dict:
    """Apply in eval and train mode with dropout keys 1 and 2, in one jitted call.

    The variables have init's structure (traced, not run) filled from NumPy: compiling Flax's
    initialisers for every parameter shape costs seconds, and these tests need no particular values.
    """
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.normal(size=a.shape), a.dtype), abstract)

    @jax.jit
    def apply_modes(variables, x):
        def apply(train, key):
            rngs = {"dropout": jax.random.key(key)}
            return model.apply(variables, x, train=train, mutable=["batch_stats"], rngs=rngs)

        return {"eval": [apply(False, 1), apply(False, 2)], "train": [apply(True, 1), apply(True, 2)]}

    return {"variables": variables, **apply_modes(variables, x)}


def test_registry_lists_every_preset():
    assert models.list_models() == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_preset_has_exact_param_count_and_float32_logits(name):
    variables, logits = abstract_init(models.create_model(name, 10), models.default_input_shape(name))
    assert models.count_params(variables["params"]) == EXPECTED_PARAMS[name]
    assert logits.shape == (2, 10)
    assert logits.dtype == jnp.float32
    assert ("batch_stats" in variables) == (name in BATCH_NORM_PRESETS)


@pytest.mark.parametrize("name", ["mlp", "tiny_cnn", "cnn", "lenet5"])
def test_mnist_preset_computes_finite_logits(name):
    x = jax.random.uniform(jax.random.key(1), (2, *models.default_input_shape(name)))
    (logits, _), _ = run_modes(models.create_model(name, 10), x)["eval"]
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()


def test_real_init_gives_float32_params_and_finite_logits():
    model = models.create_model("tiny_cnn", 10)
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(model.apply(variables, x)).all()


def test_default_input_shapes_are_mnist_or_cifar():
    shapes = {name: models.default_input_shape(name) for name in models.list_models()}
    assert shapes == {
        "mlp": (28, 28, 1), "tiny_cnn": (28, 28, 1), "cnn": (28, 28, 1), "lenet5": (28, 28, 1),
        "vgg": (32, 32, 3), "resnet20": (32, 32, 3), "resnet18": (32, 32, 3),
    }


def _is_plain(value) -> bool:
    if isinstance(value, tuple):
        return all(_is_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str))


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_model_defaults_are_plain_values_that_rebuild_the_preset(name):
    defaults = models.model_defaults(name)
    assert all(_is_plain(v) for v in defaults.values()), defaults
    config = ml_collections.ConfigDict({"name": name, **defaults})
    options = {k: v for k, v in config.items() if k != "name"}
    assert models.create_model(name, 10, **options) == models.create_model(name, 10)


def test_options_accept_lists_from_configs():
    model = models.create_model("cnn", 10, blocks=[[4], [8]], hidden=[16], kernel_size=[3, 3])
    variables, logits = abstract_init(model, (28, 28, 1))
    # 3·3·1·4 + 4 = 40; 3·3·4·8 + 8 = 296; 7·7·8·16 + 16 = 6,288; 16·10 + 10 = 170
    assert models.count_params(variables["params"]) == 6_794
    assert logits.shape == (2, 10)


def test_count_params_sums_every_leaf():
    assert models.count_params({"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4), {"c": jnp.zeros(())}]}) == 11


def test_bfloat16_computes_in_bfloat16_but_keeps_float32_params_and_logits():
    model = models.create_model("vgg", 10, dtype=jnp.bfloat16)
    variables, logits = abstract_init(model, (32, 32, 3))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32
    hidden = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True)[1], variables,
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
    )
    assert hidden["intermediates"]["Dense_0"]["__call__"][0].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "name, options",
    [
        ("vgg", dict(blocks=((4,), (8,)), hidden=(8,))),
        ("resnet20", dict(stage_sizes=(1, 1), widths=(4, 8))),
    ],
)
def test_batch_norm_stats_update_in_train_mode_only(name, options):
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    out = run_modes(models.create_model(name, 10, **options), x)
    initial = out["variables"]["batch_stats"]
    (_, in_eval), _ = out["eval"]
    (_, in_train), _ = out["train"]
    unchanged = jax.tree.map(np.array_equal, initial, in_eval["batch_stats"])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), initial, in_train["batch_stats"])
    assert all(jax.tree.leaves(unchanged)) and all(jax.tree.leaves(changed))


def test_resnet_projects_the_shortcut_only_where_the_shape_changes():
    model = models.create_model("resnet20", 10, stage_sizes=(2, 2), widths=(4, 8))
    variables, _ = abstract_init(model, (8, 8, 3))
    with_shortcut = {name for name, block in variables["params"].items() if "shortcut_conv" in block}
    assert with_shortcut == {"BasicBlock_2"}  # the first block of stage 2 (stride 2, 4 → 8 features)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_dropout_changes_output_in_train_mode_only(name):
    model = models.create_model(name, 10, dropout=0.5, hidden=(32,))
    out = run_modes(model, jax.random.uniform(jax.random.key(1), (2, 28, 28, 1)))
    (eval_1, _), (eval_2, _) = out["eval"]
    (train_1, _), (train_2, _) = out["train"]
    np.testing.assert_array_equal(eval_1, eval_2)  # different dropout keys, same output
    assert not np.allclose(train_1, eval_1) and not np.allclose(train_1, train_2)


def test_unknown_model_lists_known_names():
    with pytest.raises(JaxcnnError, match=r"'resnet50' \(model\.name\).*resnet18, resnet20"):
        models.create_model("resnet50", 10)
    with pytest.raises(JaxcnnError, match="resnet50"):
        models.model_defaults("resnet50")


def test_unknown_option_names_the_key_and_lists_valid_options():
    with pytest.raises(JaxcnnError, match=r"model\.widht.*'resnet20'.*stage_sizes, widths"):
        models.create_model("resnet20", 10, widht=(8,))


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("mlp", dict(activation="rleu"), "model.activation"),
        ("cnn", dict(pool="mean"), "model.pool"),
        ("cnn", dict(padding="FULL"), "model.padding"),
        ("cnn", dict(pool_window=0), "model.pool_window"),
        ("cnn", dict(blocks=(32, 64)), "model.blocks"),
        ("lenet5", dict(input_padding=-2), "model.input_padding"),
        ("vgg", dict(dropout=1.0), "model.dropout"),
        ("mlp", dict(hidden=512), "model.hidden"),
        ("resnet18", dict(widths=(64, 128)), "model.widths"),
    ],
)
def test_bad_option_value_fails_at_construction_naming_the_key(name, options, key):
    with pytest.raises(JaxcnnError, match=key.replace(".", r"\.")):
        models.create_model(name, 10, **options)


def test_groups_that_do_not_divide_the_input_channels_fail_at_init():
    with pytest.raises(JaxcnnError, match=r"model\.groups"):
        abstract_init(models.create_model("cnn", 10, groups=2), (28, 28, 1))


def test_input_too_small_for_the_model_fails_clearly():
    with pytest.raises(JaxcnnError, match="spatial size"):
        abstract_init(models.create_model("lenet5", 10), (8, 8, 1))


@pytest.mark.parametrize("conv_impl", ["auto", "xla", "shift", "im2col", "hybrid"])
def test_check_input_shape_names_the_layer_and_sizes_of_a_dilated_kernel_larger_than_its_input(conv_impl):
    model = models.create_model("cnn", 10, padding="VALID", dilation=3, conv_impl=conv_impl)
    with pytest.raises(JaxcnnError) as error:
        models.check_input_shape(model, (4, 4, 1))
    assert str(error.value).startswith("input shape 4x4x1: model layer Conv_0: input spatial size 4x4 is "
                                       "smaller than its 3x3 kernel dilated to 7x7;")


@pytest.mark.parametrize("conv_impl", ["auto", "xla", "shift", "im2col", "hybrid"])
def test_a_dilated_kernel_that_just_fits_is_accepted_and_computes(conv_impl):
    model = models.create_model("cnn", 10, padding="VALID", dilation=3, conv_impl=conv_impl, blocks=((4,),),
                                pool_window=1)
    models.check_input_shape(model, (7, 7, 1))  # the 7x7 dilated kernel fits once
    logits, _ = model.init_with_output(jax.random.key(0), jnp.ones((2, 7, 7, 1)))
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())


@pytest.mark.parametrize("name, options, shape, layer", [
    ("lenet5", {}, (8, 8, 1), "Conv_1: input spatial size 4x4 is smaller than its 5x5 kernel"),
    ("tiny_cnn", {}, (2, 2, 1), "Conv_0: input spatial size 2x2 is smaller than its 3x3 kernel"),
    ("cnn", {"kernel_size": 5, "padding": 1}, (2, 2, 1), "Conv_0: input spatial size 2x2 (padded to 4x4)"),
    ("cnn", {"pool_window": 8}, (4, 4, 1), "pool of block 1 (after Conv_0): input spatial size 4x4"),
    ("cnn", {"padding": "VALID"}, (6, 6, 1), "Conv_1: input spatial size 2x2 is smaller than its 3x3 kernel"),
])
def test_check_input_shape_names_the_first_layer_that_cannot_fit(name, options, shape, layer):
    with pytest.raises(JaxcnnError) as error:
        models.check_input_shape(models.create_model(name, 10, **options), shape)
    assert f"model layer {layer}" in str(error.value)
    assert "\n" not in str(error.value)


# The smallest input each model takes: a pool of window 2 per block, VALID convolutions.
SMALLEST_INPUT = {"mlp": 1, "cnn": 4, "vgg": 8, "resnet20": 1, "resnet18": 1, "tiny_cnn": 4, "lenet5": 12}


@pytest.mark.parametrize("name", models.list_models())
def test_check_input_shape_accepts_every_model_down_to_its_smallest_input(name):
    model = models.create_model(name, 10)
    channels = models.default_input_shape(name)[-1]
    models.check_input_shape(model, models.default_input_shape(name))
    size = SMALLEST_INPUT[name]
    models.check_input_shape(model, (size, size, channels))
    if size > 1:
        with pytest.raises(JaxcnnError, match="model layer"):
            models.check_input_shape(model, (size - 1, size - 1, channels))


def test_a_model_checked_for_a_shape_is_not_traced_again_but_a_failing_one_is(monkeypatch):
    traced = []
    real_eval_shape = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: traced.append(1) or real_eval_shape(*a, **k))
    models.check_input_shape(models.create_model("tiny_cnn", 7), (9, 9, 1))
    once = len(traced)
    models.check_input_shape(models.create_model("tiny_cnn", 7), (9, 9, 1))  # an equal model: no trace
    assert once > 0 and len(traced) == once
    models.check_input_shape(models.create_model("tiny_cnn", 6), (9, 9, 1))  # another output: traced
    assert len(traced) == 2 * once
    for _ in range(2):  # a failure is never taken as passed
        with pytest.raises(JaxcnnError, match="model layer Conv_0"):
            models.check_input_shape(models.create_model("tiny_cnn", 7), (2, 2, 1))


@pytest.mark.parametrize("shape", [(28, 28), (0, 28, 1), (28.0, 28, 1), "28x28x1"])
def test_check_input_shape_refuses_what_is_not_a_shape(shape):
    with pytest.raises(JaxcnnError, match="input shape"):
        models.check_input_shape(models.create_model("mlp", 10), shape)


@pytest.mark.parametrize("num_classes", [0, 2.5, True])
def test_bad_num_classes_raises(num_classes):
    with pytest.raises(JaxcnnError, match="classes"):
        models.create_model("mlp", num_classes)

import pytest

from vlafoundry.config import ConfigError, apply_overrides, from_dict, to_dict
from vlafoundry.train.config import ExperimentConfig, list_presets, load_config


def test_presets_load_and_validate():
    names = list_presets()
    for required in ("babyai-gotolocal", "babyai-goto", "babyai-pickuploc", "babyai-putnextlocal", "metaworld-mt10"):
        assert required in names
    for n in names:
        cfg = load_config(n)
        assert cfg.name
        # round trip through a plain dict is lossless
        assert to_dict(from_dict(ExperimentConfig, to_dict(cfg))) == to_dict(cfg)


def test_dotted_overrides_typed():
    cfg = load_config("babyai-gotolocal", ["--train.lr", "3e-4", "--model.fusion=early", "--train.compile", "true"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.fusion == "early"
    assert cfg.train.compile is True


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["--train.lrr", "1"], "unknown config key 'train.lrr'"),
        (["--model.fusion", "sideways"], "model.fusion: expected one of"),
        (["--train.steps", "abc"], "train.steps: expected an integer"),
        (["--train.steps", "-5"], "steps: expected an integer >= 1"),
        (["--model.modality_dropout.image", "1.5"], "model.modality_dropout.image"),
        (["--bogus.key", "1"], "unknown config key 'bogus.key'"),
    ],
)
def test_bad_config_names_key(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config("babyai-gotolocal", overrides)
    assert fragment in str(info.value)


def test_unknown_key_lists_valid_choices():
    with pytest.raises(ConfigError) as info:
        from_dict(ExperimentConfig, {"model": {"fusoin": "early"}})
    assert "fusion" in str(info.value) and "fusoin" in str(info.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError):
        apply_overrides({}, ["train.lr", "1"])
    with pytest.raises(ConfigError):
        apply_overrides({}, ["--train.lr"])


def test_env_cache_is_a_data_key_passed_to_generation(tmp_path, monkeypatch):
    """data.env_cache reaches generate_dataset when training generates its data; negative values are refused."""
    import types

    import pytest

    from vlafoundry.config import ConfigError
    from vlafoundry.train import inputs
    from vlafoundry.train.config import load_config

    seen = {}

    def fake_generate(env, episodes, root, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr("vlafoundry.data.generate_dataset", fake_generate)
    cfg = load_config("babyai-gotolocal", ["--data.env_cache", "3", "--data.cache_dir", str(tmp_path)])
    with pytest.raises(RuntimeError, match="stop"):
        inputs.ensure_dataset(cfg, types.SimpleNamespace(is_main=True, world_size=1), progress=False)
    assert seen["env_cache"] == 3
    assert load_config("babyai-gotolocal", []).data.env_cache == 16
    with pytest.raises(ConfigError, match=r"data.env_cache: expected an integer >= 0"):
        load_config("babyai-gotolocal", ["--data.env_cache", "-2"])

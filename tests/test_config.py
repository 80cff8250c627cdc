import pytest

from hybrid_dist.config import Config, ConfigError, load_config, save_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampler:\n  alpha: 0.25\n  mode: cross\noptim:\n  lr: 3e-5\n")
    cfg = load_config(path, ["sampler.batch_size=64", "data.languages=[en, de]", "model.name_or_path=xlm-roberta-base"])
    assert cfg.sampler.alpha == 0.25 and cfg.sampler.mode == "cross" and cfg.sampler.batch_size == 64
    assert cfg.optim.lr == pytest.approx(3e-5) and isinstance(cfg.optim.lr, float)
    assert cfg.data.languages == ["en", "de"] and cfg.model.name_or_path == "xlm-roberta-base"
    assert cfg.optim.weight_decay == 0.01  # default kept


def test_unknown_key_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sampler:\n  alpha: 0.5\n  alpah: 0.3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: sampler\.alpah: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'sampler.alpah'"):
        load_config(None, ["sampler.alpah=0.3"])


def test_wrong_types_and_choices_are_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: train\.max_steps: expected an integer"):
        load_config(path)
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, ["sampler.mode=sometimes"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["sampler.alpha"])
    path.write_text("sampler: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["sampler.alpha=0.75", "loss.name=multilingual"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert load_config(None) == Config()


def test_repo_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_config(path)

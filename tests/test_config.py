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


def _same(loaded, written) -> bool:
    """A loaded value equals the YAML's (YAML 1.1 reads ``3e-5`` as a string; ints widen to floats)."""
    if isinstance(loaded, float) and isinstance(written, (int, float, str)) and not isinstance(written, bool):
        return loaded == float(written)
    if isinstance(loaded, dict) and isinstance(written, dict):  # a list entry (eval.benchmarks): keys not written default
        return all(k in loaded and _same(loaded[k], v) for k, v in written.items())
    if isinstance(loaded, list) and isinstance(written, list):
        return len(loaded) == len(written) and all(_same(a, b) for a, b in zip(loaded, written))
    return type(loaded) is type(written) and loaded == written


def _check_config_file(path, tree: dict) -> Config:
    import yaml

    from hybrid_dist.config import flatten, from_dict, to_dict

    cfg = load_config(path)
    loaded = flatten(cfg)
    written = flatten(tree)
    assert written, f"{path}: sets no key"
    for key, value in written.items():
        assert key in loaded, f"{path}: {key} is not a config key"
        assert _same(loaded[key], value), f"{path}: {key} loads as {loaded[key]!r}, the file says {value!r}"
    # every other key keeps its default
    defaults = flatten(Config())
    assert {k: v for k, v in loaded.items() if k not in written} == {k: v for k, v in defaults.items() if k not in written}
    # round trips: to_dict/from_dict and a saved YAML give the same config
    assert from_dict(to_dict(cfg)) == cfg
    assert from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg
    return cfg


def test_repo_configs_load():
    """Every training config in configs/ and experiments/configs/ loads to exactly the values it
    writes (and defaults elsewhere); every search file in ray_configs/ applies its fixed overrides
    to its base config. (launchers/ are accelerate files: tests/test_backends.py checks them.)"""
    import json
    from pathlib import Path

    import yaml

    from hybrid_dist.config import flatten

    repo = Path(__file__).resolve().parents[1]
    training = sorted((repo / "configs").glob("*.yaml")) + sorted((repo / "experiments" / "configs").glob("*.yaml"))
    assert {p.name for p in training} >= {"default.yaml", "tiny.yaml", "demo.yaml", "hybrid.yaml", "recommended.yaml"}
    loaded = {}
    for path in training:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(tree, dict), f"{path}: not a mapping"
        loaded[path] = _check_config_file(path, tree)

    searches = 0
    for path in sorted((repo / "ray_configs").glob("*.yaml")):
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        if "cluster_name" in tree:  # a Ray autoscaler file, not a search
            assert "base_config" not in tree and "provider" in tree, path
            continue
        searches += 1
        base = (path.parent / tree["base_config"]).resolve()
        assert base in loaded, f"{path}: base_config {base} is not one of the repository's configs"
        fixed = tree.get("overrides") or {}
        cfg = load_config(base, [f"{k}={json.dumps(v)}" for k, v in fixed.items()])  # JSON is YAML
        flat = flatten(cfg)
        for key, value in fixed.items():
            # a fixed override may name a section (model.scratch: {...}): compare key by key
            items = {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) and key not in flat else {key: value}
            for k, v in items.items():
                assert k in flat and _same(flat[k], v), f"{path}: overrides {k}={v!r}, loads as {flat.get(k)!r}"
        for key in tree["space"]:
            assert key in flatten(Config()), f"{path}: space {key} is not a config key"
    assert searches >= 3

import pytest

from fashion_stack.core.config import ConfigError, PipelineConfig, load_config, parse_override, DEFAULT_CONFIG
from fashion_stack.core.config import PROJECT_ROOT, shipped_configs


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"folds\.kk"):
        load_config(write(tmp_path, "folds:\n  kk: 3\n"))


def test_unknown_member_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"members\[0\]\.epochz"):
        load_config(write(tmp_path, "members:\n  - name: a\n    epochz: 3\n"))


def test_layers_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "name: x\nfolds:\n  k: 4\n")
    config = load_config(path, [parse_override("folds.seed=7"), parse_override("folds.k=5")])
    assert (config.name, config.folds.k, config.folds.seed) == ("x", 5, 7)
    assert config.download.timeout_s == PipelineConfig().download.timeout_s


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="folds.k: expected int"):
        load_config(write(tmp_path, "folds:\n  k: three\n"))


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match="data.pool"):
        load_config(write(tmp_path, "data:\n  pool: everything\n"))
    with pytest.raises(ConfigError, match="unique"):
        load_config(write(tmp_path, "members:\n  - name: a\n  - name: a\n"))


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configs_load(name):
    # every config in configs/ (found, not listed by hand), checked as the CLI checks it: with the
    # plug-in registries, so a stacker, rule, loss or pooling setting out of its bounds fails here
    from fashion_stack.pipeline import registered_choices
    config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml", choices=registered_choices())
    assert config.members, "every shipped config trains at least one member"
    assert config.stack.stackers and config.decision.rules


def test_there_are_shipped_configs_to_check():
    assert {"demo", "ccp", "imaterialist2018", "kaggle"} <= set(shipped_configs())


def test_default_is_demo():
    assert load_config().name == "demo" and DEFAULT_CONFIG.name == "demo.yaml"


def test_section_hash_changes_with_section_only():
    a, b = PipelineConfig(), PipelineConfig()
    b.decision.max_labels = 10
    assert a.section_hash("folds") == b.section_hash("folds")
    assert a.section_hash("decision") != b.section_hash("decision")

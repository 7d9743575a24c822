from dataclasses import dataclass

import pytest

from toolkit.config import ConfigError, TrainConfig, _field_comments, config_help, parse_config


@dataclass
class DemoConfig(TrainConfig):
    """A recipe config for tests."""

    widths: tuple[int, ...] = (8, 16)  # channels per stage
    note: str = "x"  # free text
    scale: float = 1.0  # a factor, unitless


def parse(*argv):
    return parse_config(DemoConfig, list(argv), exit_on_error=False)


def test_defaults_and_both_override_forms():
    cfg = parse("--epochs", "3", "--lr=0.5", "--run-name", "abc", "--widths", "4,8,12")
    assert (cfg.epochs, cfg.lr, cfg.run_name, cfg.widths) == (3, 0.5, "abc", (4, 8, 12))
    assert isinstance(cfg.epochs, int) and isinstance(cfg.lr, float)
    assert parse().epochs == DemoConfig().epochs


def test_booleans_bare_and_valued():
    assert parse("--resume").resume is True
    assert parse("--resume", "--epochs", "2").resume is True
    assert parse("--resume", "true").resume is True and parse("--resume=false").resume is False
    assert parse("--resume", "auto").resume == "auto" == parse("--resume=auto", "--epochs", "2").resume
    with pytest.raises(ConfigError, match="resume must be true, false or auto, got 'sometimes'"):
        parse("--resume", "sometimes")
    assert parse("--channels-last", "false").channels_last is False
    assert parse("--channels_last=0").channels_last is False
    with pytest.raises(ConfigError, match="boolean"):
        parse("--channels-last=maybe")
    with pytest.raises(ConfigError, match=r"--channels_last expects a boolean \(true/false\), got 'maybe'"):
        parse("--channels-last", "maybe")  # not "expected --key or --key=value, got 'maybe'"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse("--epoch", "3")
    msg = str(err.value)
    assert "--epoch" in msg and "epochs" in msg and "batch_size" in msg and "widths" in msg


def test_wrong_type_and_range_are_refused():
    with pytest.raises(ConfigError, match="--epochs expects int, got 'three'"):
        parse("--epochs", "three")
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        parse("--batch-size", "0")
    with pytest.raises(ConfigError, match="lr must be > 0"):
        parse("--lr", "-1e-3")
    with pytest.raises(ConfigError, match="wandb_mode must be one of"):
        parse("--wandb-mode", "cloud")
    with pytest.raises(ConfigError, match="needs a value"):
        parse("--epochs")


def test_command_line_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(DemoConfig, ["--nope", "1"])
    assert exit_info.value.code == 2
    assert "unknown config key --nope" in capsys.readouterr().err


def test_help_lists_every_field_with_default_and_meaning(capsys):
    text = config_help(DemoConfig)
    for name in ("epochs", "lr", "widths", "scale", "wandb_mode"):
        assert f"--{name}" in text
    assert "peak learning rate" in text and "channels per stage" in text and "(8, 16)" in text
    with pytest.raises(SystemExit) as exit_info:
        parse_config(DemoConfig, ["--help"])
    assert exit_info.value.code == 0
    assert "--batch_size" in capsys.readouterr().out


@pytest.mark.parametrize("env, flag, expected", [
    (None, None, "offline"),  # nothing set: offline, no account needed
    ("disabled", None, "disabled"),  # W&B's own environment variable is honoured
    ("online", None, "online"),
    ("dryrun", None, "offline"),  # W&B's legacy spelling
    ("disabled", "offline", "offline"),  # the flag wins over the environment
])
def test_wandb_mode_comes_from_the_flag_then_the_environment(monkeypatch, env, flag, expected):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    argv = [] if flag is None else ["--wandb-mode", flag]
    assert parse_config(DemoConfig, argv).wandb_mode == expected


def test_a_bad_wandb_mode_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "cloud")
    with pytest.raises(ConfigError, match="environment variable WANDB_MODE='cloud' must be one of"):
        parse_config(DemoConfig, [], exit_on_error=False)
    assert parse_config(DemoConfig, ["--wandb-mode", "disabled"]).wandb_mode == "disabled"


def test_help_columns_line_up_and_say_dashes_work():
    """Every meaning starts in one column (a `bool | str` type or a default up to 20 characters used to push it
    right), and the usage line says that --some-key and --some_key both work."""
    text = config_help(DemoConfig)
    assert "--some-key and --some_key both work" in text.splitlines()[0]
    rows = [line for line in text.splitlines() if line.startswith("  --")]
    comments = _field_comments(DemoConfig)
    starts = {line.index(comments[line.split()[0][2:]]) for line in rows
              if len(line.split(" default ", 1)[1].split("  ")[0]) <= 20}
    assert len(starts) == 1, "\n".join(rows)


@pytest.mark.parametrize("argv", [
    ["--epochs", "3", "--epochs", "4"],
    ["--epochs=3", "--epochs", "4"],
    ["--batch-size", "8", "--batch_size=8"],  # the same value, and the two spellings of one key
    ["--resume", "--epochs", "2", "--resume", "false"],  # a bare boolean flag counts too
])
def test_a_key_given_twice_is_refused_naming_it(argv):
    """The later value used to win silently (a default in a Makefile variable, then the user's, mixed up)."""
    key = argv[0].split("=")[0][2:].replace("-", "_")
    with pytest.raises(ConfigError, match=f"^--{key} given twice "):
        parse(*argv)


def test_settings_from_a_json_or_yaml_file_under_the_command_line(tmp_path):
    """--config FILE: a run's config.json (with its "recipe" key) or YAML; lists as lists; the command line wins;
    the key given twice check counts the command line only."""
    import json

    saved = parse("--epochs", "3", "--lr=0.5", "--widths", "4,8", "--resume", "auto", "--note", "a b")
    record = {"recipe": "demo", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(saved).items()}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    again = parse("--config", str(tmp_path / "config.json"))
    assert again == saved
    assert parse(f"--config={tmp_path / 'config.json'}", "--epochs", "5").epochs == 5  # the command line wins
    (tmp_path / "s.yaml").write_text("channels-last: false\nwidths: [2, 4, 6]\nscale: 1e-3\nlr: 2\n")
    cfg = parse("--lr", "0.1", "--config", str(tmp_path / "s.yaml"))
    assert (cfg.channels_last, cfg.widths, cfg.scale, cfg.lr) == (False, (2, 4, 6), 0.001, 0.1)
    assert isinstance(cfg.scale, float)


@pytest.mark.parametrize("text, name, message", [
    ('{"epochz": 3}', "c.json", r"--config .*c\.json: unknown config key 'epochz'; valid keys: .*epochs"),
    ('{"epochs": "many"}', "c.json", r"--config .*c\.json: --epochs expects int, got 'many'"),
    ('[1, 2]', "c.json", r"c\.json: expected a mapping of setting to value, got list"),
    ('{"epochs": 3', "c.json", r"c\.json: not readable as JSON"),
    ("epochs: [3\n", "c.yaml", r"c\.yaml: not readable as YAML"),
])
def test_a_bad_settings_file_is_refused_naming_it(tmp_path, text, name, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse("--config", str(tmp_path / name))


def test_config_flag_needs_one_path(tmp_path):
    with pytest.raises(ConfigError, match="--config needs a path"):
        parse("--config")
    with pytest.raises(ConfigError, match="--config given twice"):
        parse("--config", "a.json", "--config=b.json")
    with pytest.raises(ConfigError, match=r"--config .*missing\.json: cannot read it"):
        parse("--config", str(tmp_path / "missing.json"))


@pytest.mark.parametrize("raw", ["4,,8", "4,8,", ",4,8"])
def test_a_list_with_an_empty_item_is_refused(raw):
    """An empty item was dropped silently: "16,,32" became (16, 32)."""
    from toolkit.models.segmentation import parse_widths

    with pytest.raises(ConfigError, match=r"--widths expects comma-separated int values, got .* \(an empty item\)"):
        parse("--widths", raw)
    with pytest.raises(ValueError, match="an empty item"):  # the brain-MRI recipes' --widths (a str field)
        parse_widths(raw)
    assert parse("--widths", "").widths == () and parse_widths("") == () and parse_widths("8, 16") == (8, 16)

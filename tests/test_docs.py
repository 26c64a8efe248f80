"""The commands quoted in README.md and docs/*.md: every train.py line composes, every other
tool accepts its flags, and the cheap ones (bdrate.py on shipped anchors) run as written."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hpcm import plot
from hpcm.codec.__main__ import main as codec_main
from hpcm.eval import evaluate, report, wandb_log
from hpcm.train.cli import CONF_DIR, prepare_overrides

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOOLS: dict[str, Callable] = {
    "evaluate.py": evaluate.main,
    "bdrate.py": report.main,
    "hpcm.codec": codec_main,
    "hpcm.plot": plot.main,
    "hpcm.eval.wandb_log": wandb_log.main,
}


def quoted_commands() -> list[tuple[str, list[str]]]:
    """(script, arguments) of every python command line in the docs' bash blocks."""
    commands = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                tokens = shlex.split(line, comments=True)
                for script in ("train.py", *TOOLS):
                    if script in tokens:
                        commands.append((script, tokens[tokens.index(script) + 1 :]))
    return commands


COMMANDS = quoted_commands()


def test_docs_quote_every_tool() -> None:
    assert {script for script, _ in COMMANDS} == {"train.py", *TOOLS}
    assert len(COMMANDS) > 20


def overrides_of(args: list[str]) -> list[str]:
    """The Hydra overrides of a train.py line: without -m, --cfg KIND, a trailing ``&``, and the
    prose placeholders ``...`` and ``[same overrides as before]``."""
    out, skip = [], False
    for arg in args:
        if arg.startswith("["):
            break
        if skip or arg in ("-m", "--multirun", "&", "..."):
            skip = False
            continue
        skip = arg == "--cfg"
        if not skip:
            out.append(arg)
    return out


def first_job(override: str) -> str:
    """A sweep override (``key=a,b,c``) as its first job's (``key=a``); others unchanged."""
    (parsed,) = OverridesParser.create().parse_overrides([override])
    if not parsed.is_sweep_override():
        return override
    return f"{parsed.get_key_element()}={next(parsed.sweep_string_iterator())}"


@pytest.mark.parametrize("args", [a for s, a in COMMANDS if s == "train.py"], ids=" ".join)
def test_train_commands_compose(args: list[str]) -> None:
    if "hydra/launcher=slurm" in args:  # the [slurm] extra
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    overrides = prepare_overrides(overrides_of(args))
    if "-m" in args or "--multirun" in args:  # a sweep: its first job composes
        overrides = [first_job(o) for o in overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    # Each override of the line takes effect: a group's option is chosen, a key holds the value.
    checked = 0
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() or "${" in override.input_line:  # resolved elsewhere
            continue
        key, value = override.key_or_group, override.value()
        if key in cfg.hydra.runtime.choices:
            assert cfg.hydra.runtime.choices[key] == value, override.input_line
        else:
            selected = OmegaConf.select(cfg, key)
            selected = selected.name if isinstance(selected, Enum) else selected  # hydra.mode
            assert selected == value, override.input_line
        checked += 1
    assert checked or not overrides or any("," in o or "(" in o for o in overrides)


@pytest.mark.parametrize(("script", "args"), [c for c in COMMANDS if c[0] != "train.py"])
def test_tool_commands_accept_their_flags(
    script: str, args: list[str], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # relative outputs (report/, results/) land here
    code = TOOLS[script](args)
    err = capsys.readouterr().err
    if all(a.startswith(("anchor:", "-")) or "anchor:" in a for a in args):
        assert code == 0, err  # shipped anchors only: runs as written
    else:  # the example's paths do not exist here: a one-line error naming one, not usage (2)
        named = [a for a in args if not a.startswith("-")]
        assert code == 1 and err.startswith("error: ") and any(a in err for a in named), err


def markdown_table(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped of spaces) of the table whose header row starts with
    ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_readme_model_table_lists_every_model_with_its_parameter_count() -> None:
    """Built on the meta device: the counts without allocating HPCM-1B's 4 GB."""
    import torch

    import hpcm
    from hpcm.codec.model import MODEL_CONFIGS

    rows = markdown_table((ROOT / "README.md").read_text(), "| `model=` |")
    stated = {name.strip("`"): int(count.replace(",", "")) for name, count, *_ in rows}
    assert set(stated) == set(MODEL_CONFIGS)
    for name, count in stated.items():
        with torch.device("meta"):
            model = hpcm.build_model(name)
        assert sum(p.numel() for p in model.parameters()) == count, name


def test_training_config_table_lists_every_option_of_every_group() -> None:
    """docs/training.md's table names every group of ``conf/`` (Hydra's own aside) and, in its
    options cell, every option of that group."""
    rows = markdown_table((ROOT / "docs" / "training.md").read_text(), "| group |")
    documented = {group.strip("`"): options for group, options, *_ in rows}
    groups = {d.name for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra"}
    assert set(documented) == groups
    for group in groups:
        options = {f.stem for f in (CONF_DIR / group).glob("*.yaml")}
        named = set(re.findall(r"`([^`]+)`", documented[group]))
        assert options <= named, (group, options - named)


def test_evaluation_doc_names_the_per_image_csv_columns_in_order() -> None:
    text = " ".join((ROOT / "docs" / "evaluation.md").read_text().split())
    assert f"`{evaluate.CSV_NAME}`: `{', '.join(evaluate.CSV_FIELDS)}`" in text

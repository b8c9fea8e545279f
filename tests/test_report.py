"""The generated results section: the gate table (references, the fraction to close, each
architecture's value and gap closed) and each study's gate line and gap-closed column."""

from analysis.tables import RunRecord, write_tables
from lab.io import write_json
from studies.registry import STUDIES
from studies.report import report

SPLITTER = STUDIES["splitter"]  # choice_accuracy, closes >= 0.8 of the gap from history_free


def fake_run(root, model, architecture, seed, choice, reference):
    keys = {"experiment": "x", "study": "splitter", "condition": "figure8", "model": model}
    run_dir = root / model / f"seed{seed}"
    write_json(
        run_dir / "summary.json",
        {
            "n_params": 1000,
            "steps": 10,
            "train_seconds": 1.0,
            "final": {"choice_accuracy": choice, "accuracy": 0.8},
            "references": {
                "history_free": {"choice_accuracy": reference, "accuracy": 0.7},
                "clock": {"choice_accuracy": 0.0, "accuracy": 0.1},
            },
            "chance_accuracy": None,
            "curves": [],
        },
    )
    return RunRecord(
        {**keys, "seed": seed},
        run_dir,
        "alternation",
        architecture,
        SPLITTER.gate,
        SPLITTER.headline,
    )


def test_the_gate_table_gives_references_required_fraction_and_gap_closed(tmp_path):
    records = [
        fake_run(tmp_path, "transformer", "transformer", 0, 0.95, 0.5),
        fake_run(tmp_path, "lstm", "lstm", 0, 0.9, 0.5),
        fake_run(tmp_path, "lstm", "lstm", 1, 0.8, 0.6),
        fake_run(tmp_path, "transformer-wide", "transformer", 0, 1.0, 0.5),
    ]
    tables = write_tables(records, tmp_path / "results")
    text = report([SPLITTER], tables, "cmd")
    lines = text.splitlines()
    header = lines.index(
        "| study | condition | gate metric | references | closes | transformer | lstm |"
    )
    row = lines[header + 2]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # references: the mean over the condition's four runs, (0.5 * 3 + 0.6) / 4
    assert cells[:5] == ["splitter", "figure8", "choice_accuracy", "history_free 0.525", "≥ 0.8"]
    assert cells[5] == "0.95 (0.9; 1/1)"  # (0.95 - 0.5) / (1 - 0.5)
    # lstm: seeds close (0.9 - 0.5) / 0.5 = 0.8 (passes) and (0.8 - 0.6) / 0.4 = 0.5
    value, closed = "0.85 [0.8, 0.9]", "0.65 [0.5, 0.8]"
    assert cells[6] == f"{value} ({closed}; 1/2)"
    assert "transformer-wide" not in lines[header + 2]  # extra arms: in the study's section
    assert (
        lines.index(
            "Converged: choice_accuracy closes >= 0.8 of the gap from history_free to 1 "
            f"({SPLITTER.gate.why})."
        )
        > header
    )
    section = lines[
        lines.index(
            "| condition | model | params | converged | gap closed | "
            "choice_accuracy | frac_splitter |"
        )
        + 2 :
    ]
    assert section[0].startswith("| figure8 | transformer | 1,000 | 1/1 | 0.9 | 0.95 |")
    assert section[1].startswith(f"| figure8 | lstm | 1,000 | 1/2 | {closed} | {value} |")
    assert section[2].startswith("| figure8 | transformer-wide | 1,000 | 1/1 | 1 | 1 |")

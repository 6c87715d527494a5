"""Bad inputs through the real command line: one `error: ...` line, a non-zero exit, nothing half-written.

Every case fails before the model is loaded, so a run costs only the interpreter start; the
runs are launched together once per module (each in its own folder) and checked one by one.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import save_nifti, synthetic_ct_array

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_dicom import phantom, write_series  # noqa: E402

pytestmark = pytest.mark.reliability  # part of the corpus of docs/reliability.md

BOX = "2,2,1,20,20,3"  # inside the 48×40×5 synthetic CT


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "priorsam", "segment-box", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not Python warnings (a ``...Warning: ...`` line and its indented source line)."""
    kept, skip_next = [], False
    for ln in stderr.splitlines():
        if not ln.strip():
            continue
        if skip_next and ln.startswith(" "):
            skip_next = False
            continue
        skip_next = "Warning:" in ln
        if not skip_next:
            kept.append(ln)
    return kept


@dataclass
class Case:
    """One CLI run: its arguments, the output it must not leave, and what its error line must say."""

    folder: Path                      # the run's own folder (checked for leftovers)
    args: list[str]
    out: Path
    needles: tuple[str, ...]
    before: set[str] = field(default_factory=set)
    proc: subprocess.CompletedProcess | None = None


def _image(kind: str, folder: Path) -> Path:
    good = synthetic_ct_array()
    text = "this is a radiology report, not an image\n"
    if kind == "missing":
        return folder / "nope.nii.gz"
    if kind == "truncated_gzip":
        p = save_nifti(folder / "ct.nii.gz", good)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind in ("text_as_nifti", "unknown_extension", "text_as_nrrd"):
        p = folder / {"text_as_nifti": "notes.nii.gz", "unknown_extension": "notes.txt",
                      "text_as_nrrd": "notes.nrrd"}[kind]
        p.write_text(text)
        return p
    if kind == "2d":
        return save_nifti(folder / "ct.nii.gz", good[:, :, 0])
    if kind == "single_slice":
        return save_nifti(folder / "ct.nii.gz", good[:, :, :1])
    if kind == "4d":
        return save_nifti(folder / "ct.nii.gz", np.stack([good, good], axis=-1))
    if kind == "all_zero":
        return save_nifti(folder / "ct.nii.gz", np.zeros_like(good))
    if kind == "zero_size":
        return save_nifti(folder / "ct.nii.gz", np.zeros((48, 40, 0), dtype=np.float32))
    if kind == "nan_voxels":
        bad = good.copy()
        bad[3, 4, 2] = np.nan
        return save_nifti(folder / "ct.nii.gz", bad)
    if kind == "empty_folder":
        (folder / "empty").mkdir()
        return folder / "empty"
    if kind == "good":
        return save_nifti(folder / "ct.nii.gz", good)
    raise AssertionError(kind)


BAD_IMAGES = {
    "missing": ("input not found",),
    "truncated_gzip": ("corrupt or truncated",),
    "text_as_nifti": ("not a readable NIfTI image", "not a gzip file"),
    "unknown_extension": ("not a readable image",),
    "text_as_nrrd": ("not a readable image",),
    "2d": ("2D image",),
    "single_slice": ("2D image",),
    "4d": ("4D image",),
    "all_zero": ("empty volume",),
    "zero_size": ("empty volume", "(48, 40, 0)"),
    "nan_voxels": ("1 voxels are NaN",),
    "empty_folder": ("no DICOM series",),
}
BAD_BOXES = {
    "box_beyond": ("200,200,50,220,220,60", "outside the volume"),
    "box_negative": ("-30,-30,-9,-10,-10,-5", "outside the volume"),
    "box_three_numbers": ("1,2,3", "expected six"),
    "box_words": ("a,b,c,d,e,f", "expected six"),
    "box_flat": ("5,5,1,5,30,3", "empty once clipped"),
}


def build_cases(root: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def new(name: str) -> tuple[Path, Path]:
        folder = root / name
        (folder / "inputs").mkdir(parents=True)
        return folder, folder / "results" / "labels.nii.gz"  # "results" does not exist yet

    for kind, needles in BAD_IMAGES.items():
        folder, out = new(kind)
        cases[kind] = Case(folder, [str(_image(kind, folder / "inputs")), BOX, str(out)], out, needles)
    for name, (box, needle) in BAD_BOXES.items():
        folder, out = new(name)
        cases[name] = Case(folder, [str(_image("good", folder / "inputs")), box, str(out)], out, (needle,))
    folder, out = new("ras_box_outside")
    cases["ras_box_outside"] = Case(folder, [str(_image("good", folder / "inputs")), "500,500,500,600,600,600",
                                             str(out), "--space", "ras"], out, ("outside the volume", "(ras)"))
    folder, out = new("unknown_space")
    cases["unknown_space"] = Case(folder, [str(_image("good", folder / "inputs")), BOX, str(out), "--space", "lps"],
                                  out, ("box space",))

    # The output's parent is a regular file: nobody, root included, can create a folder there.
    folder, _ = new("unwritable_output")
    blocker = folder / "not_a_folder"
    blocker.write_text("x")
    out = blocker / "sub" / "labels.nii.gz"
    cases["unwritable_output"] = Case(folder, [str(_image("good", folder / "inputs")), BOX, str(out)], out,
                                      ("cannot be created", str(blocker)))
    for name, out_name, needle in (("output_png", "labels.png", "unsupported output type"),
                                   ("output_nhdr", "labels.nhdr", "unsupported output type"),
                                   ("output_is_folder", "inputs", "is a folder")):
        folder, _ = new(name)
        out = folder / out_name
        # the input is missing too: the output check must come first, before any reading
        cases[name] = Case(folder, [str(folder / "inputs" / "nope.nii.gz"), BOX, str(out)], out, (needle,))

    folder, out = new("two_series")
    study = folder / "inputs" / "study"
    a = write_series(study, phantom(z=3, rows=24, cols=20), prefix="a")
    b = write_series(study, phantom(z=5, rows=28, cols=22, seed=1), prefix="b")
    cases["two_series"] = Case(folder, [str(study), BOX, str(out)], out,
                               ("2 DICOM series", "--series", a["series_uid"], b["series_uid"]))
    # Picking one gets past the series check; the deliberately outside box is then judged on *that* series.
    for name, geom, shape in (("series_a", a, "(20, 24, 3)"), ("series_b", b, "(22, 28, 5)")):
        cases[name] = Case(folder, [str(study), "100,100,40,120,120,50", str(out), "--series", geom["series_uid"]],
                           out, ("outside the volume", shape))
    cases["series_unknown"] = Case(folder, [str(study), BOX, str(out), "--series", "1.2.3.4.5"], out,
                                   ("series 1.2.3.4.5 not found", a["series_uid"]))
    for case in cases.values():
        case.before = {p.name for p in case.folder.iterdir()}
    return cases


CASE_NAMES = [*BAD_IMAGES, *BAD_BOXES, "ras_box_outside", "unknown_space", "unwritable_output", "output_png",
              "output_nhdr", "output_is_folder", "two_series", "series_a", "series_b", "series_unknown"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, Case]:
    cases = build_cases(tmp_path_factory.mktemp("bad_inputs"))
    assert sorted(cases) == sorted(CASE_NAMES)
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda c: run_cli(*c.args, cwd=c.folder), cases.values()))
    for case, proc in zip(cases.values(), procs):
        case.proc = proc
    return cases


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cli_rejects_cleanly(cli_runs, name):
    case = cli_runs[name]
    proc = case.proc
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in case.needles:
        assert needle in lines[0], lines[0]
    if name != "output_is_folder":
        assert not case.out.exists(), "the output must not exist after a failed run"
    assert {p.name for p in case.folder.iterdir()} == case.before, "temp files or new folders were left behind"
    assert not [p for p in case.folder.rglob("*") if ".part" in p.name]


def test_two_series_reader_picks_the_right_one(tmp_path):
    from priorsam.errors import InputError
    from priorsam.io import list_dicom_series, read_volume

    folder = tmp_path / "study"
    a = write_series(folder, phantom(z=3, rows=24, cols=20), prefix="a")
    b = write_series(folder, phantom(z=5, rows=28, cols=22, seed=1), prefix="b")
    assert set(list_dicom_series(folder)) == {a["series_uid"], b["series_uid"]}
    with pytest.raises(InputError, match="2 DICOM series"):
        read_volume(folder)
    assert read_volume(folder, series_uid=b["series_uid"]).source.shape == (22, 28, 5)
    assert read_volume(folder / "a000.dcm", series_uid=a["series_uid"]).source.shape == (20, 24, 3)


def test_cli_checks_need_no_torch():
    """The command's checks import no torch, so a bad input is reported in about a second."""
    code = ("import sys, priorsam.cli, priorsam.cli.segment, priorsam.cli.segment_box, priorsam.io; "
            "sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0

"""Report: markdown + self-contained HTML; the HTML is rendered in headless Chromium and its images checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from random_policy import RandomPolicy  # tests/random_policy.py
from vlafoundry.eval.report import GifSpec, ReportInputs, plot_similarity, read_metrics, write_report
from vlafoundry.eval.robustness import run_robustness
from vlafoundry.eval.rollout import ObservationCorruption, evaluate_policy, replay_frames

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def render_in_chromium(html_path: Path, profile: Path) -> tuple[str, list[str]]:
    """(DOM after the load event, console messages) of ``html_path`` rendered by headless Chromium."""
    cmd = [
        _browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", html_path.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def _image_widths(dom: str) -> list[int]:
    return [int(w) for w in re.findall(r'<img [^>]*data-natural-width="(\d+)"', dom)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with (out / "metrics.jsonl").open("w") as f:
        for step in range(0, 200, 20):
            f.write(json.dumps({"step": step, "split": "train", "loss": 2.0 / (1 + step), "accuracy": step / 200}) + "\n")
            if step % 40 == 0:
                f.write(json.dumps({"step": step, "split": "val", "loss": 2.2 / (1 + step)}) + "\n")
        f.write('{"step": 200, "split": "tr')  # a line cut short by a crash must not break the report
    res = evaluate_policy(RandomPolicy(), ["babyai/GoToLocal", "babyai/GoToObj"], episodes=6, num_envs=6)
    rob = run_robustness(RandomPolicy(), "babyai/GoToLocal", episodes=4, num_envs=4,
                         conditions=[ObservationCorruption(), ObservationCorruption(remove=("instruction",))])  # fmt: skip
    frames = replay_frames(res.episodes[0])
    rng = np.random.default_rng(0)
    inputs = ReportInputs(
        eval_result=res.to_dict(),
        run_dir=out,
        robustness=rob,
        tables={"Offline metrics": {"action accuracy": 0.5, "image_to_text_r@1": 0.25}},
        similarity=(rng.normal(size=(5, 5)), [f"obs {i}" for i in range(5)], [f"instr {i}" for i in range(5)]),
        attention=(frames[:3], [rng.random((7, 7)) for _ in range(3)], None),
        gifs=[GifSpec(frames, "episode 0 <with markup & quotes\">")],
        notes=["a note"],
    )
    paths = write_report(out, inputs)
    return out, paths


def test_markdown_report_and_assets(report):
    out, paths = report
    md = paths["markdown"].read_text()
    for section in ("## Closed-loop success", "## Training", "## Success per subgroup (bias)",
                    "## Robustness to missing, noisy and corrupted inputs", "## Offline metrics",
                    "## Observation-instruction similarity", "## Attention over the image", "## Episodes"):  # fmt: skip
        assert section in md
    assert "| babyai/GoToLocal | 6 |" in md and "| all | 12 |" in md
    assert "no instruction" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 7  # per task, training, subgroups, robustness, similarity, attention, one gif
    for link in links:
        assert (out / link).is_file() and (out / link).stat().st_size > 100
    assert (out / "report_assets" / "episode_00.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    assert len(read_metrics(out / "metrics.jsonl")) == 15  # truncated last line skipped


def test_html_is_self_contained(report):
    _, paths = report
    text = paths["html"].read_text()
    srcs = re.findall(r'<img src="([^"]{0,40})', text)
    assert len(srcs) == 7 and all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,")) for s in srcs)
    assert "&lt;with markup &amp; quotes&quot;&gt;" in text  # captions escaped
    assert not re.search(r'(src|href)="(https?:|file:|report_assets)', text)


def test_html_renders_in_chromium_with_images_and_no_console_errors(report, tmp_path):
    if _browser() is None:
        pytest.skip("no Chromium binary found (looked for: " + ", ".join(BROWSERS) + "); install Debian's chromium")
    _, paths = report
    dom, console = render_in_chromium(paths["html"], tmp_path / "profile")
    widths = _image_widths(dom)
    assert len(widths) == 7, dom[:500]
    assert all(w > 0 for w in widths), widths
    assert 'data-images-loaded="7/7"' in dom
    assert console == []

    # The same check flags a broken page (so it is not vacuous): a missing image and a script error.
    bad = tmp_path / "bad.html"
    good_img = re.search(r'<img src="data:image/png;base64,[^"]+"[^>]*>', paths["html"].read_text()).group(0)
    bad.write_text(
        paths["html"].read_text().replace(good_img, '<img src="does-not-exist.png">', 1)
        .replace("</body>", "<script>undefinedFunction();</script></body>")  # fmt: skip
    )
    dom, console = render_in_chromium(bad, tmp_path / "profile2")
    widths = _image_widths(dom)
    assert len(widths) == 7 and widths.count(0) == 1
    assert any("undefinedFunction" in line for line in console)


def test_plot_input_validation(tmp_path):
    with pytest.raises(ValueError, match="matrix: expected a 2-D"):
        plot_similarity(np.zeros(4), tmp_path / "s.png")


def test_eval_command_writes_json_and_report(tmp_path, monkeypatch, capsys):
    import vlafoundry.train.trainer
    from vlafoundry.cli.main import main
    from vlafoundry.config import from_dict
    from vlafoundry.train.config import ExperimentConfig

    cfg = from_dict(ExperimentConfig, {"data": {"env": "babyai/GoToLocal", "seed": 0, "episodes": 50,
                                                "image": "symbolic", "path": str(tmp_path / "no-dataset")},
                                       "eval": {"episodes": 3}})  # no dataset on disk: no offline metrics
    monkeypatch.setattr(vlafoundry.train.trainer, "load_run", lambda path, device="cpu": (RandomPolicy(), cfg, {}))
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000010").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "split": "train", "loss": 0.5}\n')
    para = tmp_path / "para.json"
    para.write_text(json.dumps({"go to the {color} {object}": ["walk to the {color} {object}"]}))
    rc = main(["eval", str(run / "checkpoints" / "step_0000010"), "--workers", "0", "--gifs", "1",
               "--paraphrases", str(para), "--robustness"])  # fmt: skip
    assert rc == 0
    data = json.loads((run / "eval.json").read_text())
    assert data["rows"][0]["episodes"] == 3 and data["config"]["seed_start"] == 10**9
    assert [r["condition"] for r in data["robustness"]][:2] == ["full input", "no instruction"]
    assert "paraphrase" in data and (run / "report.html").is_file()
    md = (run / "report.md").read_text()
    assert "## Training" in md and "Language generalisation" in md and "no similarity heat map" in md
    bad = tmp_path / "bad.json"
    bad.write_text('{"go to the ball": []}')
    assert main(["eval", str(run), "--paraphrases", str(bad)]) == 2
    assert "bad.json: key 'go to the ball': expected a non-empty list" in capsys.readouterr().err

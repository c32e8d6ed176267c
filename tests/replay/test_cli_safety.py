"""Replay commands never overwrite what agent-grpo did not write (issue 15 item 4), never send a
model's terminal escapes to the terminal (item 5), and answer bad options with a message (item 8)."""

from __future__ import annotations

from scripted_run import build_run
from typer.testing import CliRunner

from agent_grpo.cli import replay as cli


def invoke(*args: str):
    return CliRunner().invoke(cli.replay_app, [str(a) for a in args], env={"COLUMNS": "220"})


def refused(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    for w in words:
        assert w in res.output, res.output


def test_export_keeps_a_foreign_hf_folder(written, tmp_path):
    run = written[0]
    out = tmp_path / "mine"
    (out / "hf").mkdir(parents=True)
    (out / "hf" / "precious.arrow").write_text("someone else's dataset")
    refused(invoke("export", run, out, "--no-hf"), "did not write")
    assert (out / "hf" / "precious.arrow").read_text() == "someone else's dataset"
    refused(invoke("export", run, run, "--no-hf"))  # into the run itself
    refused(invoke("export", run, run / "images", "--no-hf"), "inside")
    (tmp_path / "file").write_text("x")
    refused(invoke("export", run, tmp_path / "file", "--no-hf"), "not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_export_again_replaces_its_own_files_and_keeps_others(written, tmp_path):
    run = written[0]
    out = tmp_path / "sft"
    out.mkdir()
    (out / "README.md").write_text("mine")
    assert invoke("export", run, out, "--no-hf").exit_code == 0
    first = set((out / "images").rglob("*.png"))
    stale = out / "images" / "ff" / ("f" * 64 + ".png")
    stale.parent.mkdir()
    stale.write_bytes(b"left over")
    res = invoke("export", run, out, "--no-hf", "--step", "1", "--correct", "--best-per-group")
    assert res.exit_code == 0, res.output
    assert not stale.exists()  # a file the previous export owned, no longer referenced: gone
    assert len((out / "sft.jsonl").read_text().splitlines()) == 2
    assert set((out / "images").rglob("*.png")) <= first
    assert (out / "README.md").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".agent-grpo")]


def test_html_never_overwrites_the_run_or_a_foreign_file(written, tmp_path):
    run = written[0]
    before = (run / "trajectories.jsonl").read_bytes()
    refused(invoke("html", run, "--out", run / "trajectories.jsonl"), "not a report")
    assert (run / "trajectories.jsonl").read_bytes() == before
    refused(invoke("html", run, "--out", tmp_path), "is a folder")
    (tmp_path / "notes.html").write_text("<p>my notes</p>")
    refused(invoke("html", run, "--out", tmp_path / "notes.html"), "not a report")
    assert (tmp_path / "notes.html").read_text() == "<p>my notes</p>"
    out = tmp_path / "r.html"
    assert invoke("html", run, "--out", out, "--step", "0").exit_code == 0
    assert invoke("html", run, "--out", out, "--step", "1").exit_code == 0  # our own report: replaced


def test_rescore_out_is_checked(written, tmp_path, monkeypatch):
    from scripted_run import TinyEnv

    monkeypatch.setattr("agent_grpo.replay.rescore.make_env", lambda name: TinyEnv())
    run = written[0]
    refused(invoke("rescore", run, "--out", tmp_path), "is a folder")
    (tmp_path / "data.jsonl").write_text('{"a": 1}\n')
    refused(invoke("rescore", run, "--out", tmp_path / "data.jsonl"), "not a")
    assert (tmp_path / "data.jsonl").read_text() == '{"a": 1}\n'
    assert invoke("rescore", run, "--out", tmp_path / "r.jsonl").exit_code == 0
    assert invoke("rescore", run, "--out", tmp_path / "r.jsonl").exit_code == 0


def test_bad_options_get_a_message(written, tmp_path):
    run = written[0]
    res = invoke("list", run, "--step", "0-300000000")  # a set of 3e8 ints was built here before
    assert res.exit_code == 0 and "16 of 16" in res.output
    for spec in ("5-2", "-1", "a-b"):
        refused(invoke("list", run, "--step", spec), "steps")
    refused(invoke("html", run, "--max-side", "0", "--out", tmp_path / "r.html"), "max-side")
    assert not (tmp_path / "r.html").exists()
    refused(invoke("list", tmp_path / "nothing"))


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\rOVER\u202etxt"


def escaping_script(task, sample, turn, step):
    return f"<think>{ESCAPES} [bold]markup[/bold]</think><answer>{ESCAPES}</answer>"


def test_show_and_list_print_no_terminal_escapes(tmp_path):
    run = tmp_path / "run"
    build_run(run, steps=(0,), n_tasks=1, script=escaping_script)
    res = invoke("show", run, "s0-train-0-0-0")
    assert res.exit_code == 0, res.output
    for raw in ("\x1b", "\x07", "\r", "\u202e"):
        assert raw not in res.output
    assert "\\x1b]0;pwned\\x07" in res.output and "\\u202e" in res.output  # shown, visibly
    assert "[bold]markup[/bold]" in res.output  # rich markup in model text is text
    res = invoke("list", run)
    assert "\x1b" not in res.output


def test_html_output_is_written_whole(written, tmp_path, monkeypatch):
    from agent_grpo.replay import html

    out = tmp_path / "r.html"
    assert invoke("html", written[0], "--out", out).exit_code == 0
    good = out.read_text()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(html, "render_report", broken)
    res = invoke("html", written[0], "--out", out)
    assert res.exit_code == 2 and "disk full" in res.output
    assert out.read_text() == good

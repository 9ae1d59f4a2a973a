"""The progress output: a tqdm bar on a terminal, plain epoch lines otherwise, nothing with --quiet."""

import io
import re
import sys

from jaxcnn.files.writers import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def drive(progress):
    for step in range(4):
        progress.step(epoch=1 + step // 2)
        progress.log(loss=0.5, accuracy=0.75, images_per_s=1234.0)
    progress.line("epoch 2/2  step 4  loss 0.5000")
    progress.close()


def test_terminal_bar_shows_epoch_step_loss_accuracy_throughput_and_eta(monkeypatch):
    bar = Terminal()
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", bar)
    drive(Progress(total_steps=4, num_epochs=2, quiet=False))
    last = bar.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "epoch 2/2" in last and "4/4" in last
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", last), last  # elapsed<ETA
    assert re.search(r"loss=0\.5000, acc=0\.7500, img/s=1234", last), last


def test_without_a_terminal_only_the_epoch_lines_are_printed(monkeypatch, capsys):
    drive(Progress(total_steps=4, num_epochs=2, quiet=False))
    captured = capsys.readouterr()
    assert captured.out == "epoch 2/2  step 4  loss 0.5000\n" and captured.err == ""


def test_quiet_prints_nothing_even_on_a_terminal(monkeypatch):
    out, err = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    drive(Progress(total_steps=4, num_epochs=2, quiet=True))
    assert out.getvalue() == "" and err.getvalue() == ""


def test_without_a_terminal_a_progress_line_comes_at_least_every_interval(capsys):
    progress = Progress(total_steps=4, num_epochs=2, quiet=False, every_s=0.0)
    progress.step(epoch=1)
    progress.log(loss=0.5, accuracy=0.75, images_per_s=1234.0)
    progress.step(epoch=1, num_steps=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["step 1/4  (epoch 1/2)", "step 3/4  (epoch 1/2)  loss 0.5000  acc 0.7500  1234 img/s"]
    Progress(total_steps=4, num_epochs=2, quiet=True, every_s=0.0).step(epoch=1)
    assert capsys.readouterr().out == ""

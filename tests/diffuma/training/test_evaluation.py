"""evaluate / evaluate_checkpoint / markdown tables, with the stand-in model."""

import json

import pytest
import torch

from chdl.torch_dataset import SequenceDataset
from diffuma.evaluation import COPY_LAST_FRAME, evaluate, evaluate_checkpoint, report_markdown
from diffuma.metrics import compute_metrics, copy_last_frame
from diffuma.training import train_from_config


class CopyLast(torch.nn.Module):
    def forward(self, x):
        return copy_last_frame(x, 5)


def test_evaluate_matches_metrics_on_the_whole_split_and_carries_the_baseline(tiny_dataset):
    ds = SequenceDataset(tiny_dataset, "val")
    res = evaluate(CopyLast(), ds, batch_size=3)  # 4 sequences in batches of 3 and 1
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.stack([ds[i][1] for i in range(len(ds))])
    direct = compute_metrics(copy_last_frame(xs, 5), ys)
    assert res["model"]["overall"] == pytest.approx(direct["overall"])
    assert res["copy_last_frame"] == res["model"]
    assert res["model"]["n_sequences"] == 4
    assert evaluate(CopyLast(), ds, max_sequences=2, with_copy_last_frame=False)["model"]["n_sequences"] == 2


def test_evaluate_checkpoint_and_markdown(standin, tiny_dataset, tmp_path):
    run = train_from_config({"model": {"name": "standin", "preset": "tiny"},
                             "run": {"epochs": 1, "batch_size": 4, "num_workers": 0, "ema_decay": 0.5}},
                            tiny_dataset, tmp_path / "run", progress=False)
    r = evaluate_checkpoint(run / "checkpoints" / "last.pt", tiny_dataset, convention="openstl", batch_size=2)
    json.dumps(r)  # JSON-ready
    assert r["weights"] == "ema" and r["convention"] == "openstl" and r["n_sequences"] == 4
    assert len(r["model"]["per_frame"]) == 5 and r["out_frames"] == 5
    per_pixel = evaluate_checkpoint(run / "checkpoints" / "last.pt", tiny_dataset, weights="ema")
    assert r["model"]["overall"]["mse"] == pytest.approx(per_pixel["model"]["overall"]["mse"] * 16 * 16)
    md = report_markdown(r)
    assert f"| {COPY_LAST_FRAME} |" in md and "| standin |" in md
    assert "Metric convention: `openstl`" in md and "SUMMED over C·H·W" in md
    assert "| t+1 | t+2 | t+3 | t+4 | t+5 |" in md
    with pytest.raises(ValueError, match="no sequences"):
        evaluate_checkpoint(run / "checkpoints" / "last.pt", tiny_dataset, split="train", max_sequences=0)

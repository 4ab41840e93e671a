"""`make demo DATA=...`: the whole loop on a competition folder, through tools/demo.py."""
import json

from tools.demo import main

from simsearch.data.demo import build_demo_competition


def test_demo_loop_on_a_competition_folder(tmp_path, monkeypatch, capsys):
    comp = build_demo_competition(tmp_path / "comp", seed=1, views_per_item=3, crop_grid=1)["out_dir"]
    monkeypatch.chdir(tmp_path)  # the demo writes submissions/ relative to the working folder
    assert main(["--data", str(comp), "--work", str(tmp_path / "work"), "--val-split", "class",
                 "train.stages=[{epochs: 1, train: head}, {epochs: 1, unfreeze_last: 1}]", "train.epochs=2",
                 "train.wise_alphas=[0, 1]", "train.batch_p=4", "train.batch_k=2", "loss.xbm_size=16",
                 "data.val_fraction=0.4", "data.num_workers=0", "data.image_size=64", "infer.batch_size=16"]) == 0
    out = capsys.readouterr().out
    sub = json.loads((tmp_path / "submissions" / "demo_comp.json").read_text())
    gt = json.loads((comp / "test" / "ground_truth.json").read_text())
    assert sorted(sub) == sorted(gt)
    # the side-by-side table: both models, plain and post-processed
    for row in ("| untrained | none |", "| untrained | shipped |",
                "| fine-tuned | none |", "| fine-tuned | shipped |"):
        assert row in out
    assert "leaderboard" in out
    assert (tmp_path / "submissions" / "leaderboard.csv").is_file()
    assert (tmp_path / "work" / "comp" / "wise.csv").is_file()

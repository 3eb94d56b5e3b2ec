"""Each table's caption is written once (advfine.report.captions) and rendered into Markdown, LaTeX and HTML."""
from __future__ import annotations

import re

import pytest

from advfine.pipeline import vocab
from advfine.report import captions, collect, render
from advfine.report.captions import Caption


def test_markup_with_math_and_special_characters_in_each_format():
    text = r"Accuracy in % of A & B on fashion_mnist: $\mathcal{T}_{ad}(f_{st}^{q})$ and $f^p$, 1 ± 2 · A ≈ B, † #1"
    assert captions.markdown(text) == ("Accuracy in % of A & B on fashion_mnist: T_ad(f_st^q) and f^p, 1 ± 2 · A ≈ B, "
                                       "† #1")
    assert captions.html(text) == ("Accuracy in % of A &amp; B on fashion_mnist: T_ad(f_st^q) and f^p, 1 ± 2 · "
                                   "A ≈ B, † #1")
    assert captions.latex(text) == (r"Accuracy in \% of A \& B on fashion\_mnist: $\mathcal{T}_{ad}(f_{st}^{q})$ "
                                    r"and $f^p$, 1 $\pm$ 2 $\cdot$ A $\approx$ B, $^{\dagger}$ \#1")
    assert captions.html("a < b > c") == "a &lt; b &gt; c" and captions.latex("a < b") == "a $<$ b"
    assert captions.markdown("$n = 1$, $10^6$ bytes, $\\ell_1$") == "n = 1, 10^6 bytes, ℓ_1"


def test_an_unclosed_dollar_is_refused():
    with pytest.raises(ValueError, match="unclosed"):
        captions.latex("costs $5")


def latex_is_balanced(tex: str) -> bool:
    """Braces balance, math shifts pair, and no %, &, _ or # is left unescaped outside math."""
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    parts = re.split(r"(?<!\\)\$", tex)
    text = "".join(parts[::2])
    return depth == 0 and len(parts) % 2 == 1 and not re.search(r"(?<!\\)[%&_#]", text)


def all_captions(dataset: str) -> dict[str, Caption]:
    df = collect.collect_metrics([])
    return captions.table_captions(df, dataset, {"fashion_mnist": 0.8, "cifar10": 0.5}, 8, margin=5.0)


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_every_caption_is_valid_in_every_format(dataset):
    for key, caption in all_captions(dataset).items():
        for text in (caption.numbered_title, caption.notes):
            assert latex_is_balanced(captions.latex(text)), (key, text)
            assert not re.search(r"[$\\{}]", captions.markdown(text)), (key, text)  # no LaTeX left in plain text
    assert latex_is_balanced(r"\caption{50\% of f\_st}") and not latex_is_balanced("50% of f_st")


def test_every_table_has_one_caption_in_each_of_its_files(tmp_path):
    """One caption per table of ``write_tables``, and each file of a table shows that caption and its notes."""
    written = render.write_tables(collect.collect_metrics([]), tmp_path, 0.5, 8, dataset="cifar10")
    table_captions = all_captions("cifar10")
    assert set(table_captions) == set(render._TEX_HEADERS)
    stems = vocab.table_names("cifar10")
    assert [p.stem for p in written[::len(vocab.TABLE_FORMATS)]] == stems
    for stem, caption in zip(stems, table_captions.values(), strict=True):
        md = (tmp_path / f"{stem}.md").read_text(encoding="utf-8")
        assert md.startswith(captions.markdown(caption.numbered_title) + "\n")
        assert md.endswith(captions.markdown(caption.notes) + "\n")
        page = (tmp_path / f"{stem}.html").read_text(encoding="utf-8")
        assert f"<p>{captions.html(caption.numbered_title)}</p>" in page
        assert f'<p class="note">{captions.html(caption.notes)}</p>' in page
        tex = (tmp_path / f"{stem}.tex").read_text(encoding="utf-8")
        assert rf"\caption{{{captions.latex(caption.title)}}}" in tex
        assert rf"{{\footnotesize {captions.latex(caption.notes)}}}" in tex
    assert (tmp_path / "table4_compressed.md").read_text(encoding="utf-8").startswith("Table 4: ")
    assert "50\\% sparsity" in (tmp_path / "table4_compressed.tex").read_text(encoding="utf-8")

"""Real files for the RAG tests: a small corpus (PDF made with pypdf, Markdown, text, reST, HTML) and bad files."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

# Five topics far apart in meaning; the queries in the tests paraphrase them without sharing key words.
NACRE = """# Nacre

Nacre, the iridescent inner layer of mollusc shells, is about three thousand times tougher than the
aragonite it is made of. Its brick-and-mortar structure of mineral tablets glued by thin protein
layers forces cracks to deflect and wander, while tablet sliding and interlocking asperities spread
damage over a large volume instead of letting one crack run through.

## Why it matters

Engineers copy this hierarchy in ceramic composites for armour and biomedical implants.
"""

SILK_PAGES = [
    "Spider dragline silk is a protein fibre spun by orb-weaving spiders. It combines high tensile "
    "strength with large extensibility, so it absorbs more energy before breaking than steel or Kevlar.",
    "The fibre owes its properties to beta-sheet nanocrystals embedded in an amorphous matrix of "
    "glycine-rich chains. Hydrogen bonds in the crystals break and reform, dissipating energy.",
]

BONE = """Cortical bone remodels continuously. Osteoclasts resorb old mineralised tissue and osteoblasts
lay down new collagen that later mineralises with hydroxyapatite. This turnover repairs
microdamage from daily loading and lets the skeleton adapt its density to the forces it carries.
"""

GRAPHENE_HTML = """<!doctype html>
<html><head><title>Graphene</title><style>body { color: red }</style>
<script>var ignored = "javascript should never be indexed";</script></head>
<body>
<h1>Graphene electronics</h1>
<p>Graphene is a single sheet of carbon atoms in a honeycomb lattice. Electrons in it move
as massless Dirac fermions, which gives the material an extraordinary charge-carrier mobility
and makes it attractive for high-frequency transistors.</p>
</body></html>
"""

CONCRETE_RST = """Self-healing concrete
=====================

Bacteria such as Bacillus spores are mixed into the cement paste together with calcium lactate.
When water enters a crack the spores germinate and precipitate limestone that seals the gap,
restoring water tightness without human repair.
"""

QUERIES = {
    # paraphrase -> file that must come first
    "why is mother-of-pearl so hard to fracture": "nacre.md",
    "what makes the thread spun by arachnids absorb so much energy": "silk.pdf",
    "how do cells rebuild the skeleton after small damage": "bone.txt",
    "a one-atom-thick carbon material for fast transistors": "graphene.html",
    "microbes that repair cracks in building materials": "concrete.rst",
}


def _pdf_escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(path: Path, pages: list[str], password: str | None = None) -> Path:
    """A real PDF with one text page per entry (Helvetica), optionally encrypted with ``password``."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"), NameObject("/BaseFont"): NameObject("/Helvetica")}
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        lines = textwrap.wrap(text, 80)
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td"] + [f"({_pdf_escape(line)}) Tj T*" for line in lines] + ["ET"]
        stream = DecodedStreamObject()
        stream.set_data("\n".join(ops).encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    if password:
        writer.encrypt(user_password=password, owner_password=password, algorithm="RC4-128")
    with open(path, "wb") as fh:
        writer.write(fh)
    return path


def make_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "nacre.md").write_text(NACRE)
    make_pdf(root / "silk.pdf", SILK_PAGES)
    sub = root / "more"
    sub.mkdir(exist_ok=True)
    (sub / "bone.txt").write_text(BONE)
    (sub / "graphene.html").write_text(GRAPHENE_HTML)
    (root / "concrete.rst").write_text(CONCRETE_RST)
    return root


def make_bad_files(root: Path) -> dict[str, str]:
    """Bad files next to one good one; returns file name -> a word the skip reason must contain."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "good.txt").write_text("Titanium alloys resist corrosion because a passive oxide film forms on the surface.\n")
    (root / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    (root / "empty.md").write_bytes(b"")
    (root / "blank.txt").write_text("   \n\n\t\n")
    (root / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e, d\xe9j\xe0 vu".encode("latin-1"))
    make_pdf(root / "locked.pdf", ["top secret alloy recipe"], password="hunter2")
    (root / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf\n")
    secret = root / "secret.txt"
    secret.write_text("unreadable words")
    secret.chmod(0)
    os.symlink("loop_b.txt", root / "loop_a.txt")
    os.symlink("loop_a.txt", root / "loop_b.txt")
    os.symlink(".", root / "self_dir")  # a folder symlink loop
    (root / "ignored.bin").write_bytes(b"\x00\x01")  # unknown extension: not a candidate at all
    return {
        "binary.txt": "binary",
        "empty.md": "empty",
        "blank.txt": "empty",
        "latin1.txt": "UTF-8",
        "locked.pdf": "encrypted",
        "broken.pdf": "PDF",
        "secret.txt": "permission",
        "loop_a.txt": "loop",
        "loop_b.txt": "loop",
        "self_dir": "loop",
    }


def make_many(root: Path, n: int, seed: int = 0, words_per_file: int = 450) -> Path:
    """``n`` files of distinct pseudo-text (several chunks each); every 7th file duplicates the one before."""
    import random

    rng = random.Random(seed)
    vocab = (
        "alloy fibre crack tablet protein mineral lattice stress strain yield polymer ceramic collagen chitin "
        "keratin silk nacre bone enamel wood cellulose lignin graphene carbon nanotube composite hierarchy "
        "toughness stiffness strength fatigue fracture interface bridging sliding twisting buckling helix "
        "sheet crystal amorphous matrix hydrogen bond network energy dissipation model simulation experiment"
    ).split()
    root.mkdir(parents=True, exist_ok=True)
    previous = ""
    for i in range(n):
        if i % 7 == 6:
            text = previous
        else:
            sentences = []
            for _ in range(words_per_file // 12):
                words = [rng.choice(vocab) for _ in range(12)]
                sentences.append(" ".join(words).capitalize() + ".")
            text = f"Document {i}.\n\n" + "\n\n".join(" ".join(sentences[j : j + 4]) for j in range(0, len(sentences), 4)) + "\n"
        (root / f"doc{i:03d}.md").write_text(text)
        previous = text
    return root


def make_nacre_store(docs: Path) -> Path:
    """Three one-paragraph documents (two on nacre, one off topic) indexed into ``<docs>/../grounded.db``."""
    from preflexor_local.rag import IndexConfig, index_folder

    docs.mkdir(parents=True, exist_ok=True)
    (docs / "nacre.md").write_text("# Nacre\n\nNacre's aragonite tablets are glued by thin protein layers about 20 nm thick.\n")
    (docs / "cracks.md").write_text("# Cracks\n\nIn nacre a crack is deflected along the weak interfaces between tablets instead of running straight.\n")
    (docs / "engines.txt").write_text("Diesel engines compress air until the injected fuel ignites without a spark.\n")
    path = docs.parent / "grounded.db"
    index_folder([docs], path, IndexConfig(progress=False))
    return path


class LoggingStore:
    """A store that records every search it is asked, as (query, k)."""

    def __init__(self, store):
        self.store, self.queries = store, []

    def search(self, query, k=5):
        self.queries.append((query, k))
        return self.store.search(query, k=k)

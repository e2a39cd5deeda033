"""Property (hypothesis): canonical CoordJSON re-parses to the same objects after substituting bare coord tokens.

The inverse used here is deliberately naive and independent of the renderer: replace every bare
``<|coord_k|>`` outside JSON strings by ``k`` and ``json.loads`` the result. Descs never contain coord literals
(the validator rejects them), so a plain regex substitution is exact.
"""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from coordexp_swift.data.coordjson import assistant_payload, check_desc_text, render_objects
from coordexp_swift.data.records import GTObject

BARE = re.compile(r"<\|coord_(\d+)\|>")

descs = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(['"', "\\", "\n", "\t", "{", "}", "[", "]", ",", ":", "é", "猫", "🐱", "<", "|", ">", "_"]),
    ),
    min_size=1,
    max_size=20,
).filter(lambda s: s.strip() != "" and BARE.search(s) is None and _renderable(s))


def _renderable(s: str) -> bool:
    """The renderer's own desc rule (no special-token literal: hypothesis also draws string constants it finds in
    the package, such as ``<|box_end|>``)."""
    try:
        check_desc_text(s)
    except ValueError:
        return False
    return True

bins = st.integers(min_value=0, max_value=999)
objects = st.lists(
    st.builds(lambda d, b: GTObject(d, "bbox_2d", tuple(b)), descs, st.lists(bins, min_size=4, max_size=4)),
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(objects, st.sampled_from(["desc_first", "geometry_first"]))
def test_render_reparses_to_same_objects(objs: list[GTObject], order: str) -> None:
    text = render_objects(objs, order)  # type: ignore[arg-type]
    assert "\n" not in text
    parsed = json.loads(BARE.sub(r"\1", text))
    assert parsed == {"objects": [{"desc": o.desc, "bbox_2d": list(o.bins)} for o in objs]}
    # key order in the text follows field_order, and the payload carries the same keys in the same order
    first = "desc" if order == "desc_first" else "bbox_2d"
    assert all(next(iter(o)) == first for o in parsed["objects"])
    payload = assistant_payload(objs, order)  # type: ignore[arg-type]
    assert [list(o) for o in payload["objects"]] == [list(o) for o in parsed["objects"]]
    # non-ASCII stays unescaped: the only escapes are JSON's mandatory ones
    for o in objs:
        assert json.dumps(o.desc, ensure_ascii=False) in text

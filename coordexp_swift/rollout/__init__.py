"""Channel-B rollout machinery (SPEC §3.6): strict token-aligned parser (:mod:`.parse`), Hungarian matcher
(:mod:`.match`), FN fragment and closure scan (:mod:`.fragment`). Import the submodules directly; this package
module stays import-light (no scipy / torch at import time)."""

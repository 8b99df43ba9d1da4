"""MobileDeepPill-style pill retrieval (Zeng et al., MobiSys 2017): colour/gray/gradient embedding
streams trained with triplet loss, matched to a gallery of front/back references by cosine
similarity, scored with MAP / top-k / CMC under one-side and two-side schemes."""

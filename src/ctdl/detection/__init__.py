"""Box detection (SSD): anchors, matching, box coding, decoding with NMS, and box data.

Follows DLAE's BBD engine (itself ssd_keras), with its anchor-layer bug fixed: every aspect ratio
gets its own anchor size (DLAE's ``AnchorBoxes.call`` returned inside the ratio loop).
Boxes are (xmin, ymin, xmax, ymax) corners in pixels unless said otherwise; class 0 is background.
"""

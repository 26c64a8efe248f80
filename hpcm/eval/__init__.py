"""Evaluation: real-bitstream R-D curves of checkpoints (``evaluate``), BD-rate reports and
plots (``report``) and published R-D points (``anchors``)."""

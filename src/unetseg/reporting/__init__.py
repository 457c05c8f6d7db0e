"""Reports: one self-contained HTML page per training run (``report.html``) and per sweep, with the
curves, the figures and a validation gallery. Above inference/, whose Predictor draws the gallery."""

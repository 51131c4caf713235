"""Analysis of a study's results: statistics, measures, claims, figures and the rendering of a
report's blocks, for every kind of study. It reads stored rows and never trains or evaluates,
so a report can be rebuilt from the store alone (`longarch report <out>`); diagnostics.py alone
runs a trained model (for a kind's job; its results are stored rows like any other). It names no
kind of study: each kind builds its report's blocks on it (controlled/report.py, pretrained/report.py).
"""

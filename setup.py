"""Build hook: the wheel carries the MONAI bundle and the text priors inside the package.

``bundle/`` (configs, docs, licences and every file in ``models/``: the demo weights and whatever
else is added there) and ``prior_text/`` (texts, manifests, embeddings) live at the top of the
repository, where MONAI and the prior tools expect them. A wheel has no such place, so ``build_py``
copies both folders to ``priorsam/_data/`` in the build tree; :func:`priorsam.resources.data_dir`
finds them there after ``pip install``, and in the checkout for editable installs. The sdist
carries the folders through MANIFEST.in, so a wheel built from it is the same.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA_DIRS = ("bundle", "prior_text")   # keep in step with priorsam.resources.DATA_DIRS
IGNORE = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.tmp", ".*")


class build_py_with_data(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders directly
        for name in DATA_DIRS:
            src = HERE / name
            if not src.is_dir():
                raise SystemExit(f"error: {src} is missing; build from a checkout or from the sdist")
            dst = Path(self.build_lib) / "priorsam" / "_data" / name
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=IGNORE)


setup(cmdclass={"build_py": build_py_with_data})

"""pneumoscan: pneumonia screening in chest X-rays, for education and research only.

Submodules, in the order data flows through them:

- :mod:`pneumoscan.config`     constants and frozen option dataclasses (the only home of defaults)
- :mod:`pneumoscan.data.imaging`    file -> decoded, preprocessed pixel array (JPEG, PNG, DICOM)
- :mod:`pneumoscan.data.dataset`       dataset discovery, patient-level splits, ``tf.data`` pipelines
- :mod:`pneumoscan.data.report`     the data report (counts, sizes, duplicates, figures)
- :mod:`pneumoscan.models.architectures`     Keras model builders
- :mod:`pneumoscan.training.engine`   the training command's engine
- :mod:`pneumoscan.evaluation` metrics, thresholds, calibration, bootstrap
- :mod:`pneumoscan.evaluation.figures`    matplotlib figures
- :mod:`pneumoscan.inference.predictor`  :class:`Predictor`, the one inference path
- :mod:`pneumoscan.inference.explain`    Grad-CAM
- :mod:`pneumoscan.training.export`     LiteRT export (and its fast path)
- :mod:`pneumoscan.training.export_check`     the images an export is checked on, and the check
- :mod:`pneumoscan.interfaces.cli`, :mod:`pneumoscan.interfaces.commands`  CLI parsers, subcommands
- :mod:`pneumoscan.interfaces.app`     the Streamlit app

Importing the package is cheap; TensorFlow loads only when a model is touched.
"""

from pneumoscan._version import __version__

__all__ = ["__version__", "Predictor"]


def __getattr__(name):
    # Lazy so that `import pneumoscan` (and the CLI's --help) does not pay TensorFlow's import.
    if name == "Predictor":
        from pneumoscan.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'pneumoscan' has no attribute {name!r}")

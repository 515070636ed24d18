"""pneumoscan: pneumonia screening in chest X-rays, for education and research only.

Submodules, in the order data flows through them:

- :mod:`pneumoscan.config`     constants and frozen option dataclasses (the only home of defaults)
- :mod:`pneumoscan.imaging`    file -> decoded, preprocessed pixel array (JPEG, PNG, DICOM)
- :mod:`pneumoscan.data`       dataset discovery, patient-level splits, ``tf.data`` pipelines
- :mod:`pneumoscan.report`     the data report (counts, sizes, duplicates, figures)
- :mod:`pneumoscan.models`     Keras model builders
- :mod:`pneumoscan.training`   the training command's engine
- :mod:`pneumoscan.evaluation` metrics, thresholds, calibration, bootstrap
- :mod:`pneumoscan.figures`    matplotlib figures
- :mod:`pneumoscan.predictor`  :class:`Predictor`, the one inference path
- :mod:`pneumoscan.explain`    Grad-CAM
- :mod:`pneumoscan.export`     LiteRT export with a parity check
- :mod:`pneumoscan.cli`, :mod:`pneumoscan.app`  the command line and the Streamlit app

Importing the package is cheap; TensorFlow loads only when a model is touched.
"""

from pneumoscan._version import __version__

__all__ = ["__version__", "Predictor"]


def __getattr__(name):
    # Lazy so that `import pneumoscan` (and the CLI's --help) does not pay TensorFlow's import.
    if name == "Predictor":
        from pneumoscan.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'pneumoscan' has no attribute {name!r}")

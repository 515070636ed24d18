"""The Streamlit screening app: upload chest X-rays, read calibrated probabilities, see Grad-CAM.

Start it with ``pneumoscan app [--model PATH] [--port N]``, which runs ``streamlit run`` on this
file; the model is ``$PNEUMOSCAN_MODEL`` or the bundled LiteRT export of the released model
(:func:`pneumoscan.config.default_serving_model_path`). Grad-CAM needs gradients, so for a LiteRT model
it runs on the ``.keras`` model the export was made from, loaded the first time a heatmap is asked
for.

The page is a thin layer over the library: files are decoded by
:func:`pneumoscan.data.imaging.decode_bytes` and scored by
:meth:`pneumoscan.inference.predictor.Predictor.predict_image` (the one preprocessing and inference
path, with the out-of-scope guard of :mod:`pneumoscan.inference.scope` and the decision of
:mod:`pneumoscan.inference.decision`), heatmaps come from :mod:`pneumoscan.inference.explain`.

Models are loaded by cached loaders, a single time per server process; on the LiteRT model the app
never imports TensorFlow unless Grad-CAM is switched on, so it starts in seconds.

For education and research only; see :data:`pneumoscan.config.DISCLAIMER`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from pneumoscan import __version__
from pneumoscan.config import DISCLAIMER, default_serving_model_path
from pneumoscan.data.imaging import IMAGE_SUFFIXES, ImageDecodeError, decode_bytes
from pneumoscan.inference.decision import HEADLINES, NO_PNEUMONIA, OUT_OF_SCOPE, PNEUMONIA, band_summary
from pneumoscan.inference.results import PREDICTION_COLUMNS, percent, prediction_row
from pneumoscan.inference.scope import ScopeCheck
from pneumoscan.models.architectures import ARCHITECTURES
from pneumoscan.models.sections import HeldOutFigures

if TYPE_CHECKING:
    import pandas as pd

    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.inference.results import Prediction

log = logging.getLogger("pneumoscan.interfaces.app")

#: File types offered by the uploader (the suffixes :mod:`pneumoscan.data.imaging` reads).
UPLOAD_TYPES: list[str] = sorted(s.lstrip(".") for s in IMAGE_SUFFIXES)

#: Longest side, in pixels, of the images sent to the browser (the originals can be 3000 px).
PREVIEW_SIDE = 768

#: A model card next to the model file is shown in the sidebar.
MODEL_CARD_NAME = "MODEL_CARD.md"

#: How the results table heads the columns of :data:`pneumoscan.inference.results.PREDICTION_COLUMNS`
#: (a column without a heading here keeps its own name).
COLUMN_HEADINGS = {
    "path": "file",
    "p_normal": "P(normal)",
    "p_pneumonia": "P(pneumonia)",
    "label": "prediction",
    "scope_distance": "distance to training images",
}

#: How the model card names :attr:`Predictor.backend <pneumoscan.inference.predictor.Predictor.backend>`.
BACKEND_NAMES = {"keras": "Keras", "litert": "LiteRT"}

#: Validation metrics shown in the model card: key, label, formatter.
METRICS = (
    ("recall", "Sensitivity (recall)", "percent"),
    ("specificity", "Specificity", "percent"),
    ("accuracy", "Accuracy", "percent"),
    ("precision", "Precision (PPV)", "percent"),
    ("f1", "F1 score", "number"),
    ("roc_auc", "ROC AUC", "number"),
    ("pr_auc", "PR AUC", "number"),
    ("ece", "Calibration error (ECE)", "number"),
    ("n", "Images scored", "count"),
)


# --------------------------------------------------------------------------- helpers (no Streamlit)


def preview(gray: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """Shrink an image (grey or RGB ``uint8``) so that its longest side is at most ``side`` pixels."""
    from PIL import Image

    height, width = gray.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))


def verdict(prediction: Prediction) -> tuple[str, str | None]:
    """The decision in plain words; the confidence shown is always that of the stated outcome.

    Parameters
    ----------
    prediction : Prediction

    Returns
    -------
    headline : str
        e.g. ``"Pneumonia suspected — confidence 93 %"`` (P(pneumonia)), ``"No pneumonia detected —
        confidence 90 %"`` (P(normal)) or ``"Uncertain — needs a closer look"``; never a confidence
        below 50 % (:mod:`pneumoscan.inference.decision`).
    note : str or None
        For an uncertain image, why; else ``None``.
    """
    if prediction.decision in (PNEUMONIA, NO_PNEUMONIA):
        return f"{HEADLINES[prediction.decision]} — confidence {percent(prediction.confidence)}", None
    note = (
        f"P(pneumonia) is {percent(prediction.p_pneumonia, 1)} and "
        f"P(normal) {percent(prediction.p_normal, 1)}: "
        f"too close to the operating threshold of {percent(prediction.threshold, 1)} for either answer"
    )
    if prediction.uncertainty is not None:
        note += f", with the ensemble's models differing by {percent(prediction.uncertainty, 1)} (spread)"
    return HEADLINES[prediction.decision], note + ". A clinician should read this image."


def threshold_explanation(predictor: Predictor) -> str:
    """What the operating threshold means, in one paragraph of Markdown."""
    target = predictor.metadata.target_recall
    chosen = (
        f"chosen on the model's held-out predictions so that about {percent(target)} of pneumonias are "
        "flagged (sensitivity, or recall)"
        if target
        else "chosen on the model's held-out predictions for high sensitivity (recall)"
    )
    if predictor.threshold != predictor.metadata.threshold:
        chosen = f"set by hand for this session (the model's own is {predictor.metadata.threshold:.2f})"
    band = predictor.band
    return (
        f"The operating threshold is **P(pneumonia) ≥ {predictor.threshold:.2f}** "
        f"({percent(predictor.threshold, 1)}), {chosen}. Around it lies an *uncertain band*: "
        f'{band_summary(band)}. Above the band the page says "Pneumonia suspected", below it '
        '"No pneumonia detected", in it "Uncertain — needs a closer look".'
    )


def analyse_upload(data: bytes, name: str, predictor: Predictor) -> dict[str, Any]:
    """Decode and score one uploaded file; never raises for bad input.

    Parameters
    ----------
    data : bytes
        The whole file.
    name : str
        Its name, used in messages.
    predictor : Predictor

    Returns
    -------
    dict
        ``name``; ``prediction`` (:class:`~pneumoscan.inference.predictor.Prediction` or ``None``);
        ``image`` (a grey ``uint8`` preview, or ``None``); ``info`` (size and format);
        ``error`` (why no prediction was made, or ``None``).
    """
    result: dict[str, Any] = {"name": name, "prediction": None, "image": None, "info": "", "error": None}
    try:
        decoded = decode_bytes(data, name=name)
    except ImageDecodeError as exc:
        log.warning("refused %s: %s", name, exc.reason)
        result["error"] = exc.reason
        return result
    result["info"] = f"{decoded.width} × {decoded.height} px, {decoded.format} ({decoded.mode})"
    try:
        prediction = predictor.assess(decoded)
    except Exception as exc:  # the page must keep serving the other files
        log.exception("prediction failed for %s", name)
        result["error"] = f"prediction failed ({type(exc).__name__}: {exc})"
        return result
    if isinstance(prediction, ScopeCheck):  # not a radiograph: no probabilities
        log.warning("refused %s: %s", name, prediction.reason)
        result["scope"] = prediction
        result["error"] = f"{HEADLINES[OUT_OF_SCOPE]}: {prediction.reason}. No prediction was made."
        return result
    log.info(
        "%s: %s (P(pneumonia) %.3f, threshold %.3f)",
        name,
        prediction.label,
        prediction.p_pneumonia,
        prediction.threshold,
    )
    result.update(prediction=prediction, image=preview(decoded.gray))
    return result


def results_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per file (:func:`pneumoscan.inference.results.prediction_row`), headed by
    :data:`COLUMN_HEADINGS`: file, P(normal), P(pneumonia), prediction, confidence, threshold, error."""
    import pandas as pd

    rows = [prediction_row(r["name"], r["prediction"] or r.get("scope") or r["error"]) for r in results]
    table = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    return table.rename(columns=COLUMN_HEADINGS)


def results_csv(results: Sequence[dict[str, Any]]) -> bytes:
    """:func:`results_table` as CSV bytes (probabilities with 4 decimals)."""
    return results_table(results).to_csv(index=False, float_format="%.4f").encode()


# --------------------------------------------------------------------------- cached work


@st.cache_resource(show_spinner=False)
def load_predictor(model_path: str) -> Predictor:
    """Load the model once per server process and warm it up (first call traces the graph)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    from pneumoscan.inference.predictor import Predictor

    predictor = Predictor(model_path)
    predictor.predict_image(np.zeros((predictor.image_size, predictor.image_size), dtype=np.uint8))
    log.info("model loaded in %.1f s: %r", time.perf_counter() - start, predictor)
    return predictor


@st.cache_data(show_spinner=False, max_entries=256)
def _cached_analysis(data: bytes, name: str, model_key: str, _predictor: Predictor) -> dict[str, Any]:
    # model_key stands for the (unhashable) predictor in the cache key.
    return analyse_upload(data, name, _predictor)


@st.cache_resource(show_spinner=False)
def load_explainer(model_path: str) -> Predictor:
    """The Keras model a LiteRT ``model_path`` was exported from, for Grad-CAM, loaded once per
    server process.

    Raises
    ------
    FileNotFoundError
        A LiteRT model whose source ``.keras`` file cannot be found.
    """
    from pneumoscan.inference.predictor import Predictor, source_keras_model
    from pneumoscan.models.artifacts import ModelMetadata

    source = source_keras_model(model_path, ModelMetadata.read(model_path))
    if source is None:
        raise FileNotFoundError(
            f"Grad-CAM needs the Keras model that {os.path.basename(model_path)} was exported from, and "
            "it was not found beside it. Put the .keras file there, or start the app on the .keras "
            "model (pneumoscan app --model MODEL.keras)."
        )
    return Predictor(source)


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_overlay(data: bytes, name: str, model_key: str, _predictor: Predictor) -> np.ndarray:
    from pneumoscan.inference.explain import explain_image  # lazily: heavy, and optional

    keras_model = _predictor if _predictor.backend == "keras" else load_explainer(str(_predictor.model_path))
    explanation = explain_image(keras_model, decode_bytes(data, name=name))
    return preview(np.asarray(explanation.overlay, dtype=np.uint8))


def _model_key(predictor: Predictor) -> str:
    path = predictor.model_path
    mtime = path.stat().st_mtime if path.exists() else 0
    return f"{path.resolve()}|{mtime}|{predictor.threshold}"


# --------------------------------------------------------------------------- page parts


def show_header() -> None:
    """Title, what the app does, and the disclaimer."""
    st.title("Pneumonia screening in chest X-rays", anchor=False)
    st.caption(f"pneumoscan {__version__} · a teaching and research tool")
    st.markdown(
        "Upload one or more frontal chest X-rays (JPEG, PNG or DICOM). A neural network trained on "
        "labelled radiographs estimates, for each image, the probability of **pneumonia** versus a "
        "**normal** chest, and flags the images worth a closer look."
    )
    st.warning(DISCLAIMER, icon=":material/warning:")


def show_how_to_read(predictor: Predictor) -> None:
    """An expander explaining probabilities, the threshold and Grad-CAM."""
    with st.expander("How to read the results"):
        st.markdown(
            "- **P(normal)** and **P(pneumonia)** are *calibrated* probabilities: among validation "
            "images given 80 %, about 80 % had pneumonia. They add up to 100 %.\n"
            f"- **Operating threshold.** {threshold_explanation(predictor)}\n"
            '- **Confidence** is the probability of the outcome stated: P(pneumonia) for "Pneumonia '
            'suspected", P(normal) for "No pneumonia detected"; always at least 50 %. An uncertain '
            "image shows no confidence.\n"
            "- **Out of scope.** The model knows children's frontal chest X-rays only. Images unlike them "
            "(adults, lateral views, CT, other body parts) are marked and their probabilities are "
            "unreliable; images that are not radiographs (colour photos, documents, drawings) are not "
            "scored.\n"
            "- **Grad-CAM** (switch in the sidebar) colours the regions that pushed the score towards "
            "pneumonia. It shows where the model looked, not an outline of a lesion.\n"
            "- Files that are not images are refused."
        )


def sidebar_options() -> bool:
    """Display options in the sidebar; returns whether Grad-CAM heatmaps are wanted."""
    st.sidebar.header("Display")
    return st.sidebar.toggle(
        "Show Grad-CAM heatmaps",
        value=False,
        key="show_gradcam",
        help="Colour the regions that drove the pneumonia score. Computed only when switched on.",
    )


def held_out_caption(held_out: HeldOutFigures) -> str:
    """What the sidebar says under the held-out figures: which images, and what they chose (from the
    sidecar, so that an adapted model states its own)."""
    text = f"At the operating threshold. Measured on: {held_out.measured_on}."
    if held_out.chose:
        text += f" These images also chose the {', '.join(held_out.chose)}, so the figures are optimistic."
    return text


def sidebar_model_card(predictor: Predictor) -> None:
    """The model card: architecture, validation metrics, threshold, file, version, full card."""
    meta = predictor.metadata
    sb = st.sidebar
    sb.header("Model card")
    arch = ARCHITECTURES[meta.arch].label if meta.arch is not None else "unknown"
    lines = [
        f"**Architecture:** {arch}",
        f"**Input:** {predictor.image_size} × {predictor.image_size} px, grey",
        f"**Threshold:** P(pneumonia) ≥ {predictor.threshold:.3f}",
        f"**Model file:** `{predictor.model_path.name}` ({BACKEND_NAMES[predictor.backend]})",
    ]
    if meta.created:
        lines.append(f"**Trained:** {meta.created[:10]}")
    lines.append(f"**pneumoscan:** {__version__}")
    sb.markdown("  \n".join(lines))

    held_out = meta.held_out.metrics if meta.held_out is not None else {}
    shown = [(label, held_out[key], kind) for key, label, kind in METRICS if held_out.get(key) is not None]
    if shown:
        sb.subheader("Held-out figures")
        table = ["| metric | value |", "|---|---:|"]
        for label, value, kind in shown:
            if kind == "percent":
                text = percent(value, 1)
            elif kind == "count":
                text = f"{int(value):,}"
            else:
                text = f"{float(value):.3f}"
            table.append(f"| {label} | {text} |")
        sb.markdown("\n".join(table))
        sb.caption(held_out_caption(meta.held_out))
    else:
        sb.caption("No held-out figures are stored with this model.")
    test = meta.test_split or {}
    shown = [(label, test[key], kind) for key, label, kind in METRICS if test.get(key) is not None]
    if shown:
        sb.subheader("Official test split (measured independently)")
        intervals = test.get("ci") or {}
        table = ["| metric | value | 95 % CI |", "|---|---:|---:|"]
        for key, label, kind in ((k, lab, kd) for k, lab, kd in METRICS if test.get(k) is not None):
            value = test[key]
            text = (
                percent(value, 1)
                if kind == "percent"
                else f"{int(value):,}"
                if kind == "count"
                else f"{value:.3f}"
            )
            ci = intervals.get(key)
            table.append(f"| {label} | {text} | {f'{ci[0]:.3f}–{ci[1]:.3f}' if ci else ''} |")
        sb.markdown("\n".join(table))
        sb.caption(
            test.get("source") or "Measured on the official test split, never used to choose the model."
        )

    card = predictor.model_path.parent / MODEL_CARD_NAME
    if card.is_file():
        with sb.expander("Full model card"):
            st.markdown(card.read_text(encoding="utf-8", errors="replace"))


def show_probabilities(prediction: Prediction) -> None:
    """The two probabilities as progress bars with percentages."""
    st.progress(
        min(max(prediction.p_normal, 0.0), 1.0), text=f"P(normal): **{percent(prediction.p_normal, 1)}**"
    )
    st.progress(
        min(max(prediction.p_pneumonia, 0.0), 1.0),
        text=f"P(pneumonia): **{percent(prediction.p_pneumonia, 1)}**",
    )


def show_gradcam(data: bytes, name: str, predictor: Predictor) -> None:
    """The Grad-CAM overlay of one file, or a message saying why there is none."""
    try:
        with st.spinner("Computing Grad-CAM… (the first heatmap also loads the Keras model)"):
            overlay = _cached_overlay(data, name, _model_key(predictor), predictor)
    except FileNotFoundError as exc:
        st.info(str(exc), icon=":material/info:")
        return
    except Exception as exc:  # a heatmap failure must not hide the prediction
        log.exception("Grad-CAM failed for %s", name)
        st.warning(f"Grad-CAM could not be computed for this image ({type(exc).__name__}: {exc}).")
        return
    st.image(overlay, caption="Grad-CAM: warm colours drove the pneumonia score", width="stretch")


def show_result(result: dict[str, Any], data: bytes, predictor: Predictor, *, gradcam: bool) -> None:
    """One file: its image (and heatmap), probabilities, verdict, threshold and disclaimer."""
    name = result["name"]
    if result["error"] is not None:
        st.error(f"**{name}**: {result['error']}", icon=":material/block:")
        return
    prediction: Prediction = result["prediction"]
    headline, note = verdict(prediction)
    with st.container(border=True):
        st.subheader(name, divider="gray", anchor=False)
        left, right = st.columns([2, 3] if not gradcam else [1, 1], gap="large")
        with left:
            if gradcam:
                image_col, heat_col = st.columns(2)
                with image_col:
                    st.image(result["image"], caption=result["info"], width="stretch")
                with heat_col:
                    show_gradcam(data, name, predictor)
            else:
                st.image(result["image"], caption=result["info"], width="stretch")
        with right:
            if prediction.decision == PNEUMONIA:
                st.markdown(f"#### :red[:material/report: {headline}]")
            elif prediction.decision == NO_PNEUMONIA:
                st.markdown(f"#### :green[:material/check_circle: {headline}]")
            else:
                st.markdown(f"#### :orange[:material/help: {headline}]")
            if not prediction.in_scope:
                st.warning(f"**Out of scope:** {prediction.scope_reason}.", icon=":material/warning:")
            if note:
                st.info(note, icon=":material/info:")
            show_probabilities(prediction)
            if prediction.uncertainty is not None:
                st.caption(
                    f"Uncertainty: the ensemble's models differ by {percent(prediction.uncertainty, 1)}."
                )
            st.caption(f"Operating threshold {prediction.threshold:.2f}. {band_summary(predictor.band)}.")
            st.caption(f":material/warning: {DISCLAIMER}")


def show_summary(results: Sequence[dict[str, Any]], predictor: Predictor | None = None) -> None:
    """The results table of several files, with a CSV download (numbers with 4 decimals), and the
    batch's drift summary (:func:`pneumoscan.inference.drift.drift_summary`)."""
    from pneumoscan.inference.drift import DIFFERS, OUT_OF_SCOPE, batch_drift

    st.subheader(f"Summary of {len(results)} files", anchor=False)
    if predictor is not None and predictor.guard is not None:
        rows = [{"scope_distance": getattr(r["prediction"], "scope_distance", None)} for r in results]
        drift = batch_drift(rows, predictor.guard)
        show = st.warning if drift["verdict"] in (DIFFERS, OUT_OF_SCOPE) else st.caption
        show(f"**Drift check:** {drift['summary']}")
    table = results_table(results).drop(columns="threshold")
    for column in ("P(normal)", "P(pneumonia)", "confidence"):
        table[column] = [
            "" if value is None or value != value else percent(value, 1)  # NaN: no value
            for value in table[column]
        ]
    right = st.column_config.TextColumn(alignment="right")
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "P(normal)": right,
            "P(pneumonia)": right,
            "confidence": right,
            "error": st.column_config.TextColumn(width="large"),
        },
    )
    st.download_button(
        "Download results (CSV)",
        data=results_csv(results),
        file_name="pneumoscan-results.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )


def render_uploads(files: Sequence[tuple[str, bytes]], predictor: Predictor, *, gradcam: bool) -> list[dict]:
    """Analyse and show every uploaded file; a bad file gets an error and the others carry on.

    Parameters
    ----------
    files : sequence of (name, bytes)
    predictor : Predictor
    gradcam : bool
        Also compute and show a Grad-CAM overlay per image.

    Returns
    -------
    list of dict
        One :func:`analyse_upload` result per file.
    """
    key = _model_key(predictor)
    start = time.perf_counter()
    with st.spinner("Analysing…"):
        results = [_cached_analysis(data, name, key, predictor) for name, data in files]
    log.debug("%d file(s) analysed in %.3f s", len(files), time.perf_counter() - start)
    if len(results) > 1:
        show_summary(results, predictor)
    for result, (_, data) in zip(results, files, strict=True):
        show_result(result, data, predictor, gradcam=gradcam)
    return results


def _setup_logging() -> None:
    """Send pneumoscan's records to stderr (Streamlit configures only its own logger).

    Level from ``$PNEUMOSCAN_LOG_LEVEL`` (default INFO). Left alone when logging is already set up.
    """
    logger = logging.getLogger("pneumoscan")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("PNEUMOSCAN_LOG_LEVEL", "INFO").upper())


def main() -> None:
    """The page."""
    _setup_logging()
    log.debug("script run")
    st.set_page_config(page_title="pneumoscan — chest X-ray screening", page_icon="🫁", layout="wide")
    show_header()
    gradcam = sidebar_options()

    model_path = default_serving_model_path()
    try:
        with st.spinner(f"Loading the model {model_path.name}… (once per server start)"):
            predictor = load_predictor(str(model_path))
    except Exception as exc:  # missing file, bad sidecar, unreadable model: say what to do
        log.error("cannot load model %s: %s", model_path, exc)
        st.error(
            f"**The model could not be loaded.** {exc}\n\n"
            "To fix this, train a model (`pneumoscan train --data DATA_DIR --out runs/NAME`) and start "
            "the app on it with `pneumoscan app --model runs/NAME/model.keras`, or set the "
            "`PNEUMOSCAN_MODEL` environment variable to a `.keras` or `.tflite` model.",
            icon=":material/error:",
        )
        st.stop()
    sidebar_model_card(predictor)
    show_how_to_read(predictor)

    limit_mb = st.get_option("server.maxUploadSize")
    uploads = st.file_uploader(
        "Chest X-rays",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key="uploads",
        help=f"JPEG, PNG or DICOM, up to {limit_mb} MB each. Several files at once give a results table.",
    )
    if not uploads:
        st.info(
            "Drop one or more chest X-rays above to see the model's assessment.", icon=":material/upload:"
        )
        return
    start = time.perf_counter()
    render_uploads([(f.name, f.getvalue()) for f in uploads], predictor, gradcam=gradcam)
    log.debug("page with %d upload(s) rendered in %.3f s", len(uploads), time.perf_counter() - start)


if __name__ == "__main__":  # `streamlit run` (and AppTest) execute this file as __main__
    main()

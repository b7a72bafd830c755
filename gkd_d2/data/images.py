"""Reading a dataset's images with errors that name the file.

Detectron2 reads images with PIL: a truncated file fails as a bare ``OSError: image file is
truncated`` and an unreadable one as ``UnidentifiedImageError``, neither saying which of a
dataset's thousands of files it is. Here every image read of gkd_d2 (the training and test data
loaders through :class:`CheckedDatasetMapper`, the prototype refresh and the visualisations
through :func:`read_image`) raises :class:`ImageReadError` with the path instead.
"""
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

__all__ = ["CheckedDatasetMapper", "ImageReadError", "image_read_error", "read_image"]


class ImageReadError(OSError):
    """An image of a dataset could not be read; ``file_name`` is its path.

    Built from one message string, so a data-loader worker's error comes back to the main
    process as this class too (PyTorch re-raises it as ``type(error)(message)``)."""

    def __init__(self, message: str, file_name: str = None):
        super().__init__(message)
        self.file_name = file_name


def image_read_error(file_name: str, error: BaseException) -> ImageReadError:
    """The :class:`ImageReadError` for ``error`` raised while reading ``file_name``."""
    if isinstance(error, FileNotFoundError):
        reason = "no such file"
    else:
        reason = f"{type(error).__name__}: {error}"
    return ImageReadError(
        f"Cannot read image '{file_name}' ({reason}). Replace or repair the file, or remove its "
        "entry from the dataset's annotations (the datasets of DATASETS.TRAIN, DATASETS.TEST and "
        "DISTILL.PGM.DATASETS).",
        file_name,
    )


def read_image(file_name: str, format: str = None):
    """Detectron2's ``detection_utils.read_image`` (an (H, W, C) uint8 array in ``format``), raising
    :class:`ImageReadError` naming ``file_name`` when the file is missing, truncated or not an image."""
    try:
        return utils.read_image(file_name, format=format)
    except ImageReadError:
        raise
    except OSError as e:  # FileNotFoundError, PIL's truncated file and UnidentifiedImageError
        raise image_read_error(file_name, e) from e


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same ``@configurable`` arguments and output), whose
    image-read errors name the file (:class:`ImageReadError`)."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except ImageReadError:
            raise
        except OSError as e:
            # a missing semantic-segmentation file names itself; anything else is the image's
            raise image_read_error(getattr(e, "filename", None) or dataset_dict["file_name"], e) from e

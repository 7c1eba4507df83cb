"""Image registration on the host (seed 002, section 2.5): a test image is aligned to a reference
(a training image with the nominal camera pose) before it is scored, and its ground truth is
warped with it.

Grayscale, ORB keypoints and binary descriptors, brute-force Hamming matching with a cross
check, the best `max_matches` matches kept (the thesis's "top matches"), a homography fitted by
RANSAC, then the image warped bilinearly and its mask by nearest neighbour. scikit-image does
the work (`pip install 'adjax[registration]'`); the thesis used OpenCV and gives none of the
parameters, so the defaults here are ours. An image with fewer than `min_inliers` RANSAC
inliers is left as it is and reported, never an error: the evaluation counts it.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Settings:
    """Registration parameters (all ours; the thesis states none).

    Attributes:
      keypoints: ORB keypoints per image.
      max_matches: the best (smallest Hamming distance) cross-checked matches kept.
      min_inliers: fewer RANSAC inliers than this leaves the image unregistered.
      residual: RANSAC's inlier threshold in pixels.
      trials: RANSAC iterations.
      seed: RANSAC's random generator.
    """

    keypoints: int = 500
    max_matches: int = 100
    min_inliers: int = 12
    residual: float = 2.0
    trials: int = 1000
    seed: int = 0


def _skimage():
    try:
        import skimage  # noqa: F401
    except ImportError as err:
        raise ImportError("image registration needs scikit-image: pip install "
                          "'adjax[registration]'.") from err
    from skimage import color, feature, measure, transform

    return color, feature, measure, transform


def _features(gray: np.ndarray, settings: Settings):
    _, feature, _, _ = _skimage()
    orb = feature.ORB(n_keypoints=settings.keypoints)
    try:
        orb.detect_and_extract(gray)
    except RuntimeError:  # ORB finds no keypoint at all (a flat image)
        return np.zeros((0, 2)), np.zeros((0, 256), bool)
    return orb.keypoints, orb.descriptors


def _gray(image: np.ndarray) -> np.ndarray:
    color, _, _, _ = _skimage()
    image = np.asarray(image, np.float64) / 255.0
    return color.rgb2gray(image) if image.ndim == 3 and image.shape[-1] == 3 else image


class Registration:
    """Aligns images to one reference image (uint8 [H, W, 3] or [H, W])."""

    def __init__(self, reference: np.ndarray, settings: Settings = Settings()):
        self.settings = settings
        self.shape = reference.shape[:2]
        self.keypoints, self.descriptors = _features(_gray(reference), settings)

    def homography(self, image: np.ndarray) -> tuple[np.ndarray | None, int]:
        """(the 3 x 3 matrix mapping `image`'s (x, y) to the reference's, or None, and the
        number of RANSAC inliers or of matches when there were too few to fit)."""
        _, feature, measure, transform = _skimage()
        s = self.settings
        keypoints, descriptors = _features(_gray(image), s)
        if len(keypoints) < 4 or len(self.keypoints) < 4:
            return None, 0
        matches = feature.match_descriptors(descriptors, self.descriptors, metric="hamming",
                                            cross_check=True)
        if len(matches) < max(s.min_inliers, 4):
            return None, len(matches)
        distance = np.count_nonzero(descriptors[matches[:, 0]]
                                    != self.descriptors[matches[:, 1]], axis=1)
        matches = matches[np.argsort(distance, kind="stable")[:s.max_matches]]
        # skimage keypoints are (row, col); transforms take (x, y) = (col, row).
        src = keypoints[matches[:, 0]][:, ::-1]
        dst = self.keypoints[matches[:, 1]][:, ::-1]
        model, inliers = measure.ransac((src, dst), transform.ProjectiveTransform, min_samples=4,
                                        residual_threshold=s.residual, max_trials=s.trials,
                                        rng=s.seed)
        count = 0 if inliers is None else int(np.count_nonzero(inliers))
        if model is None or count < s.min_inliers:
            return None, count
        return np.asarray(model.params), count

    def warp(self, image: np.ndarray, matrix: np.ndarray, nearest: bool = False) -> np.ndarray:
        """`image` resampled onto the reference's grid (bilinear, or nearest for masks); the
        dtype is kept and pixels from outside the image are 0."""
        _, _, _, transform = _skimage()
        # warp() takes the map from output to input coordinates: the inverse homography.
        inverse = transform.ProjectiveTransform(np.linalg.inv(matrix))
        out = transform.warp(image.astype(np.float64), inverse, output_shape=self.shape,
                             order=0 if nearest else 1, mode="constant", cval=0,
                             preserve_range=True)
        if image.dtype == bool:
            return out > 0.5
        if np.issubdtype(image.dtype, np.integer):
            out = np.clip(np.rint(out), np.iinfo(image.dtype).min, np.iinfo(image.dtype).max)
        return out.astype(image.dtype)

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Registers each image (and its mask): (images, masks, registered [N] bool). An image
        without a homography is returned unchanged with `registered` False."""
        images = np.array(images)
        masks = None if masks is None else np.array(masks)
        registered = np.zeros(len(images), bool)
        for i, image in enumerate(images):
            matrix, _ = self.homography(image)
            if matrix is None:
                continue
            registered[i] = True
            images[i] = self.warp(image, matrix)
            if masks is not None:
                masks[i] = self.warp(masks[i], matrix, nearest=True)
        return images, masks, registered

"""Feature keys and class names shared by every stage of the pipeline."""

# Raw features, as the TFDS `oxford_iiit_pet` 4.x builder writes them.
RAW_IMAGE_KEY = "image"  # encoded JPEG (or PNG) bytes
RAW_MASK_KEY = "segmentation_mask"  # PNG trimap: 1 pet, 2 background, 3 border
LABEL_KEY = "label"  # breed id, 0..36
SPECIES_KEY = "species"  # 0 cat, 1 dog
FILE_NAME_KEY = "file_name"
HEAD_BBOX_KEY = "head_bbox"
# Per-image numbers TfdsExampleGen adds to every Example, so statistics (and drift between spans) see the
# photos, not only their byte sizes. Transform, the model and the serving signatures ignore them.
IMAGE_HEIGHT_KEY = "image_height"  # pixels, as decoded
IMAGE_WIDTH_KEY = "image_width"
IMAGE_BRIGHTNESS_KEY = "image_brightness"  # mean luma (ITU-R 601), 0..255
IMAGE_STATISTICS_KEYS = (IMAGE_HEIGHT_KEY, IMAGE_WIDTH_KEY, IMAGE_BRIGHTNESS_KEY)

# Transformed features, as `transform.preprocessing.preprocessing_fn` emits them.
IMAGE_KEY = "image"  # raw uint8 bytes of [H, W, 3] RGB; the model takes them as uint8 and scales to [0, 1]
MASK_KEY = "mask"  # raw uint8 bytes of [H, W] class ids below
SLICE_KEYS = (SPECIES_KEY, LABEL_KEY)  # passed through unchanged for TFMA slicing

# Class ids after Transform: trimap value - 1.
CLASS_NAMES = ("pet", "background", "border")
NUM_CLASSES = len(CLASS_NAMES)
# Predicted-mask value of a pixel with no class (its logits are not finite): never a hit, always a miss.
INVALID_CLASS = 255

SPECIES_NAMES = ("cat", "dog")

# Serving signature input: encoded image bytes (TF Serving treats `*_bytes` inputs as binary).
SERVING_INPUT_KEY = "image_bytes"

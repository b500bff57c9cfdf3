"""The image preprocessor: image bytes or pixels to normalized pixels, in TensorFlow ops."""

import tensorflow as tf

# Leading bytes of the formats `tf.io.decode_image` reads.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")
# The most pixels an encoded image may declare in its header (4096 x 4096):
# checked before it is decoded, so that a small file declaring a huge image
# (a 2 MB PNG of 23000 x 23000) is refused instead of decoded in full.
MAX_IMAGE_PIXELS = 1 << 24
# ITU-R BT.601 luma; the weights sum to 1, so equal channels give the gray back.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def image_size_pair(value):
    """`image_size` as `[height, width]`, from an int or a pair."""
    size = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(
            "`image_size` must be a positive int or a (height, width) pair. "
            f"Received: image_size={value!r}"
        )
    return [int(size[0]), int(size[1])]


def _per_channel(name, value, channels):
    try:
        values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    except (TypeError, ValueError):
        values = []
    if isinstance(value, (str, bool)) or len(values) not in (1, channels) or (
            name == "std" and min(values) <= 0):
        raise ValueError(f"`{name}` must be one {'positive ' if name == 'std' else ''}number or "
                         f"one per channel ({channels}). Received: {name}={value!r}")
    return values


def _unsigned(data, start, length, little_endian):
    """The unsigned integer in `data[start:start + length]` (zero past the end)."""
    raw = tf.io.decode_raw(tf.strings.substr(data + b"\0" * 32, start, length), tf.uint8)
    raw = tf.cast(raw, tf.int64)
    weights = tf.constant([256 ** i for i in (range(length) if little_endian
                                              else reversed(range(length)))], tf.int64)
    return tf.reduce_sum(raw * weights)


def _gif_colour_table_bytes(packed):
    """Bytes of the colour table a GIF packed-fields byte announces (none
    when its top bit is clear)."""
    return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64),
                                                           packed % 8), 0)


def first_gif_frame(data):
    """A GIF cut after its first image, with the trailer appended, and the
    pixels that image declares.

    `tf.io.decode_image` decodes every frame of a GIF even when it returns
    only the first (400 frames of 1000 x 1000 cost 390 MB more), so the
    frames after the first are cut away before decoding. The blocks are
    walked by their length bytes: each step moves forward by at least one
    byte, so a file of n bytes takes at most n steps.
    """
    padded = tf.io.decode_raw(data + b"\0" * 16, tf.uint8)
    length = tf.cast(tf.strings.length(data), tf.int64)

    def byte(position):
        return tf.cast(padded[tf.minimum(tf.cast(position, tf.int64), length)], tf.int64)

    def two_bytes(position):
        return byte(position) + 256 * byte(position + 1)

    def after_sub_blocks(position):
        # Data sub-blocks: a length byte, then that many bytes; 0 ends them.
        return tf.while_loop(
            lambda at: tf.logical_and(at < length, byte(at) > 0),
            lambda at: [at + byte(at) + 1], [position])[0] + 1

    # The header (6 bytes), the logical screen (7) and its colour table,
    # then extensions (0x21, a label byte, sub-blocks) up to the first image.
    position = tf.while_loop(
        lambda at: tf.logical_and(at < length, byte(at) == 0x21),
        lambda at: [after_sub_blocks(at + 2)], [13 + _gif_colour_table_bytes(byte(10))])[0]
    is_image = tf.logical_and(position < length, byte(position) == 0x2C)
    pixels = tf.where(is_image, two_bytes(position + 5) * two_bytes(position + 7), 0)
    # The image descriptor (10 bytes), its colour table, the LZW code size.
    image_data = position + 11 + _gif_colour_table_bytes(byte(position + 9))
    end = tf.where(is_image, tf.minimum(after_sub_blocks(image_data), length), position)
    return tf.strings.substr(data, tf.constant(0, tf.int64), end) + b";", pixels


def declared_pixels(data):
    """Width x height an encoded image declares in its header, read without
    decoding it: PNG's IHDR, GIF's logical screen (its first image is
    `first_gif_frame`'s), BMP's info header, JPEG's frame header
    (`tf.image.extract_jpeg_shape`)."""
    def png():
        return _unsigned(data, 16, 4, False) * _unsigned(data, 20, 4, False)

    def gif():
        return _unsigned(data, 6, 2, True) * _unsigned(data, 8, 2, True)

    def bmp():
        height = _unsigned(data, 22, 4, True)
        height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)  # top-down: negative
        return _unsigned(data, 18, 4, True) * height

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    return tf.case([
        (is_png(data), png),
        (is_gif(data), gif),
        (tf.equal(tf.strings.substr(data, 0, 2), b"BM"), bmp),
    ], default=jpeg)


def is_png(data):
    return tf.equal(tf.strings.substr(data, 0, 4), b"\x89PNG")


def is_gif(data):
    return tf.equal(tf.strings.substr(data, 0, 3), b"GIF")


def bounded_image_bytes(data, index):
    """Encoded image bytes checked before decoding: a known format, at most
    `MAX_IMAGE_PIXELS` declared pixels, and of a GIF only its first frame.
    A failed check is an `InvalidArgumentError` naming `index`."""
    recognised = tf.reduce_any(tf.stack([
        tf.strings.substr(data, 0, len(signature)) == signature
        for signature in IMAGE_SIGNATURES
    ]))
    check = tf.debugging.Assert(recognised, [tf.strings.format(
        "image_bytes[{}] ({} bytes) is not a JPEG, PNG, BMP or GIF image",
        (index, tf.strings.length(data)),
    )])
    with tf.control_dependencies([check]):
        data, first_frame_pixels = tf.cond(
            is_gif(data), lambda: first_gif_frame(data),
            lambda: (tf.identity(data), tf.constant(0, tf.int64)))
        pixels = tf.maximum(declared_pixels(data), first_frame_pixels)
    too_large = tf.debugging.Assert(pixels <= MAX_IMAGE_PIXELS, [tf.strings.format(
        "image_bytes[{}] declares {} pixels, more than the " + str(MAX_IMAGE_PIXELS)
        + " an image may (MAX_IMAGE_PIXELS)", (index, pixels))])
    with tf.control_dependencies([too_large]):
        return tf.identity(data)


def first_frame_pixels(data):
    """The pixels decoding `data`'s first frame would produce, as its header
    declares them (0 for bytes of no known format, refused when decoded)."""
    recognised = tf.reduce_any(tf.stack([
        tf.strings.substr(data, 0, len(signature)) == signature
        for signature in IMAGE_SIGNATURES
    ]))

    def pixels():
        frame = tf.cond(is_gif(data), lambda: first_gif_frame(data)[1],
                        lambda: tf.constant(0, tf.int64))
        return tf.maximum(declared_pixels(data), frame)

    return tf.cond(recognised, pixels, lambda: tf.constant(0, tf.int64))


def decode_bounded(data, index=-1):
    """Encoded image bytes -> uint8 `(H, W, C)` pixels of its first frame,
    after the checks of `bounded_image_bytes`."""
    return tf.io.decode_image(bounded_image_bytes(data, tf.cast(index, tf.int64)),
                              channels=0, expand_animations=False)


class ImagePreprocessor:
    """Raw images -> `(B, height, width, channels)` float32 pixels for an `ImageBackbone`.

    Encoded images (JPEG, PNG, BMP or GIF bytes) are decoded; pixels of any
    size and channel count are converted to the model's channels (RGB to
    grayscale by luma, grayscale to RGB by repetition, alpha dropped),
    resized (bilinear, antialiased) to `image_size`, scaled to [0, 1], and
    normalized with the checkpoint's per-channel `mean` and `std`:
    `(pixels / 255 - mean) / std`. All on TensorFlow ops, so the exported
    SavedModel preprocesses too. The zoo's own models use mean and std 0.5
    (pixels in [-1, 1]); ImageNet checkpoints carry theirs.

    Args:
        image_size: side of the square output, or `(height, width)`.
        channels: 1 (grayscale) or 3 (RGB).
        mean, std: one number, or one per channel.

    Call arguments:
        images: a batch of encoded images `(B,)` tf.string, or uint8 pixels
            `(B, H, W)` or `(B, H, W, C)` of any size.

    Returns:
        `(B, height, width, channels)` float32.

    Example:

    >>> preprocessor = ImagePreprocessor(image_size=4, channels=1)
    >>> float(preprocessor(np.full((1, 8, 8), 255, "uint8")).numpy().max())
    1.0
    """

    def __init__(self, image_size=224, channels=3, mean=0.5, std=0.5):
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
        self.image_size = image_size_pair(image_size)
        self.channels = channels
        self.mean = _per_channel("mean", mean, channels)
        self.std = _per_channel("std", std, channels)

    def __call__(self, images):
        images = tf.convert_to_tensor(images)
        if images.dtype == tf.string:
            indices = tf.range(tf.shape(images, out_type=tf.int64)[0])
            # Two images decoded at a time (map_fn's default is ten): each
            # may be a 16-megapixel image, about 0.4 GB while it is resized.
            return tf.map_fn(
                lambda item: self.decode(*item), (images, indices), parallel_iterations=2,
                fn_output_signature=tf.TensorSpec((*self.image_size, self.channels), tf.float32),
            )
        if images.shape.rank == 3:
            images = images[..., None]
        return self.normalize(self.pixels(images))

    def example(self, image):
        """One raw image (bytes or uint8 `(H, W[, C])`) -> `(height, width, channels)`."""
        if image.dtype == tf.string:
            return self.decode(image, -1)
        if image.shape.rank == 2:
            image = image[..., None]
        return self.normalize(self.pixels(image))

    def decode(self, data, index):
        """One encoded image -> normalized pixels (`decode_bounded`)."""
        return self.normalize(self.pixels(decode_bounded(data, index)))

    def pixels(self, images):
        """uint8 `(..., H, W, C)`, any size and channels -> float32 in [0, 1]
        at `image_size` with the model's channels."""
        if images.dtype != tf.uint8:
            raise TypeError(
                f"Images must be uint8 (0-255). Received dtype {images.dtype.name}."
            )
        x = _convert_channels(tf.cast(images, tf.float32), self.channels)
        height, width = self.image_size
        size = tf.shape(x)[-3:-1]
        if tuple(x.shape[-3:-1]) != (height, width):
            x = tf.cond(
                tf.reduce_all(size == [height, width]),
                lambda: x,
                lambda: tf.image.resize(x, (height, width), antialias=True),
            )
        x = tf.ensure_shape(x, [*x.shape[:-3], height, width, self.channels])
        return tf.clip_by_value(x / 255.0, 0.0, 1.0)

    def normalize(self, pixels):
        """Pixels in [0, 1] -> the backbone's input."""
        return (pixels - tf.constant(self.mean)) / tf.constant(self.std)

    def denormalize(self, inputs):
        """The backbone's input -> pixels in [0, 1] (the inverse of `normalize`)."""
        return inputs * tf.constant(self.std) + tf.constant(self.mean)

    def with_image_size(self, image_size):
        """The same preprocessor at another size."""
        return type(self)(**{**self.get_config(), "image_size": image_size})

    def get_config(self):
        return {"image_size": list(self.image_size), "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std)}


def _convert_channels(images, channels):
    """float `(..., C)` with C in 1-4 -> `channels` (1 or 3); alpha dropped."""
    def from_colour():
        rgb = images[..., :3]
        if channels == 3:
            return rgb
        return tf.reduce_sum(rgb * LUMA_WEIGHTS, axis=-1, keepdims=True)

    def from_gray():
        return tf.repeat(images[..., :1], channels, axis=-1)

    if images.shape[-1] is not None:
        return from_colour() if images.shape[-1] >= 3 else from_gray()
    converted = tf.cond(tf.shape(images)[-1] >= 3, from_colour, from_gray)
    return tf.ensure_shape(converted, [*images.shape[:-1], channels])

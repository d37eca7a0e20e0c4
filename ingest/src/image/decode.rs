//! Image bytes to an RGB pixel buffer, with limits checked from the header before any pixel
//! buffer is allocated.
//!
//! JPEGs go through `jpeg-decoder`, which can decode at 1/2, 1/4 or 1/8 scale with a reduced
//! IDCT: when the object sequence only needs `crop_size` pixels per smallest box, decoding a
//! 640x480 photo at 1/4 scale gives the same features for a fraction of the work. Other
//! formats (and JPEGs `jpeg-decoder` cannot read) go through the `image` crate with its
//! `Limits` set.

use std::io::Cursor;

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::reject::{RejectReason, Rejection};

/// An 8-bit RGB image, row-major, interleaved (`r g b r g b ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbBuffer {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

/// Limits and hints for decoding one image.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Largest accepted `width * height` of the original image.
    pub max_pixels: u64,
    /// Largest accepted width or height of the original image.
    pub max_dimension: u32,
    /// When set, JPEGs may be decoded at a reduced scale as long as the result is at least
    /// this many pixels wide and high (or the full image, when it is smaller).
    pub min_size: Option<(u32, u32)>,
}

/// A decoded image: the pixels (possibly at a reduced scale) and the original size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    /// The pixels.
    pub rgb: RgbBuffer,
    /// Width of the encoded image.
    pub original_width: u32,
    /// Height of the encoded image.
    pub original_height: u32,
}

fn check_dimensions(width: u32, height: u32, opts: &DecodeOptions) -> Result<(), Rejection> {
    if width == 0 || height == 0 {
        return Err(Rejection::new(RejectReason::ImageDecode, format!("image has an empty size {width}x{height}")));
    }
    if width > opts.max_dimension || height > opts.max_dimension {
        return Err(Rejection::new(
            RejectReason::ImageTooLarge,
            format!("image is {width}x{height}, a side exceeds image.max_dimension = {}", opts.max_dimension),
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels {
        return Err(Rejection::new(
            RejectReason::ImageTooLarge,
            format!("image is {width}x{height} = {pixels} pixels, more than image.max_pixels = {}", opts.max_pixels),
        ));
    }
    Ok(())
}

/// Decodes image bytes in any supported format (JPEG, PNG, WebP, GIF first frame, BMP, TIFF)
/// to RGB.
pub fn decode_rgb(bytes: &[u8], opts: &DecodeOptions) -> Result<DecodedImage, Rejection> {
    let format = ::image::guess_format(bytes)
        .map_err(|_| Rejection::new(RejectReason::UnsupportedFormat, "bytes are not a supported image format"))?;
    if format == ImageFormat::Jpeg {
        match decode_jpeg(bytes, opts) {
            Ok(image) => return Ok(image),
            // Limits are final; other failures get a second chance with the `image` crate,
            // which reads a few JPEG variants `jpeg-decoder` does not.
            Err(JpegError::Rejected(r)) => return Err(r),
            Err(JpegError::Decoder(e)) => {
                tracing::debug!("jpeg-decoder failed ({e}); trying the image crate");
            }
        }
    }
    decode_with_image_crate(bytes, format, opts)
}

enum JpegError {
    Rejected(Rejection),
    Decoder(jpeg_decoder::Error),
}

/// The smallest of 1/8, 1/4, 1/2, 1 that keeps both sides at least `min_size` (in eighths).
fn jpeg_scale_eighths(width: u32, height: u32, min_size: Option<(u32, u32)>) -> u32 {
    let Some((min_w, min_h)) = min_size else { return 8 };
    for eighths in [1u32, 2, 4] {
        let w = (width * eighths).div_ceil(8);
        let h = (height * eighths).div_ceil(8);
        if w >= min_w && h >= min_h {
            return eighths;
        }
    }
    8
}

fn decode_jpeg(bytes: &[u8], opts: &DecodeOptions) -> Result<DecodedImage, JpegError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(JpegError::Decoder)?;
    let info = decoder.info().ok_or_else(|| {
        JpegError::Rejected(Rejection::new(RejectReason::ImageDecode, "JPEG header has no frame"))
    })?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_dimensions(width, height, opts).map_err(JpegError::Rejected)?;
    let eighths = jpeg_scale_eighths(width, height, opts.min_size);
    if eighths < 8 {
        let w = (width * eighths).div_ceil(8);
        let h = (height * eighths).div_ceil(8);
        // Both fit in u16: they are at most the JPEG's own u16 sizes.
        decoder
            .scale(u16::try_from(w).unwrap_or(u16::MAX), u16::try_from(h).unwrap_or(u16::MAX))
            .map_err(JpegError::Decoder)?;
    }
    let pixels = decoder.decode().map_err(JpegError::Decoder)?;
    let info = decoder.info().ok_or_else(|| {
        JpegError::Rejected(Rejection::new(RejectReason::ImageDecode, "JPEG decoder lost its frame"))
    })?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let n = (w as usize) * (h as usize);
    let data = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        // Big-endian 16-bit grey: keep the high byte.
        jpeg_decoder::PixelFormat::L16 => pixels.chunks_exact(2).flat_map(|c| [c[0], c[0], c[0]]).collect(),
        // Adobe CMYK JPEGs store inverted values, as libjpeg hands them over.
        jpeg_decoder::PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|p| {
                let k = u16::from(p[3]);
                [p[0], p[1], p[2]].map(|c| ((u16::from(c) * k + 127) / 255) as u8)
            })
            .collect(),
    };
    if data.len() != n * 3 {
        return Err(JpegError::Rejected(Rejection::new(
            RejectReason::ImageDecode,
            format!("JPEG decoder returned {} bytes for {w}x{h}", data.len()),
        )));
    }
    Ok(DecodedImage { rgb: RgbBuffer { width: w, height: h, data }, original_width: width, original_height: height })
}

fn decode_with_image_crate(bytes: &[u8], format: ImageFormat, opts: &DecodeOptions) -> Result<DecodedImage, Rejection> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(opts.max_dimension);
    limits.max_image_height = Some(opts.max_dimension);
    // Room for the decoded image at up to 16 bytes per pixel (RGBA f32) plus the RGB copy.
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(19).max(1 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| map_image_error(&e))?;
    // The header has been read; nothing the size of the image is allocated yet.
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, opts)?;
    let image = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(&e))?;
    let rgb = match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    };
    let (w, h) = rgb.dimensions();
    Ok(DecodedImage { rgb: RgbBuffer { width: w, height: h, data: rgb.into_raw() }, original_width: width, original_height: height })
}

fn map_image_error(error: &::image::ImageError) -> Rejection {
    use ::image::ImageError;
    match error {
        ImageError::Limits(_) => Rejection::new(RejectReason::ImageTooLarge, format!("image exceeds the limits: {error}")),
        ImageError::Unsupported(_) => Rejection::new(RejectReason::UnsupportedFormat, format!("unsupported image: {error}")),
        _ => Rejection::new(RejectReason::ImageDecode, format!("image does not decode: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: DecodeOptions = DecodeOptions { max_pixels: 1_000_000, max_dimension: 2000, min_size: None };

    fn encode(img: &::image::RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> ::image::RgbImage {
        ::image::RgbImage::from_fn(w, h, |x, y| ::image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]))
    }

    #[test]
    fn png_decodes_exactly() {
        let img = gradient(7, 5);
        let decoded = decode_rgb(&encode(&img, ImageFormat::Png), &OPTS).expect("decodes");
        assert_eq!((decoded.rgb.width, decoded.rgb.height), (7, 5));
        assert_eq!(decoded.rgb.data, img.into_raw());
    }

    #[test]
    fn other_formats_decode() {
        let img = gradient(16, 8);
        for format in [ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::Gif] {
            let decoded = decode_rgb(&encode(&img, format), &OPTS).expect("decodes");
            assert_eq!((decoded.rgb.width, decoded.rgb.height), (16, 8), "{format:?}");
        }
    }

    #[test]
    fn jpeg_reduced_scale_keeps_the_minimum_size() {
        let img = gradient(640, 480);
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let full = decode_rgb(&jpeg, &OPTS).expect("decodes");
        assert_eq!((full.rgb.width, full.rgb.height), (640, 480));
        let reduced = decode_rgb(&jpeg, &DecodeOptions { min_size: Some((96, 96)), ..OPTS }).expect("decodes");
        assert_eq!((reduced.rgb.width, reduced.rgb.height), (160, 120));
        assert_eq!((reduced.original_width, reduced.original_height), (640, 480));
        // The reduced image is a faithful thumbnail: compare with the full one box-averaged.
        let (fw, rw) = (full.rgb.width as usize, reduced.rgb.width as usize);
        let mut max_err = 0i32;
        for y in 0..120usize {
            for x in 0..160usize {
                for c in 0..3 {
                    let mut sum = 0u32;
                    for dy in 0..4 {
                        for dx in 0..4 {
                            sum += u32::from(full.rgb.data[((y * 4 + dy) * fw + x * 4 + dx) * 3 + c]);
                        }
                    }
                    let avg = (sum / 16) as i32;
                    let r = i32::from(reduced.rgb.data[(y * rw + x) * 3 + c]);
                    max_err = max_err.max((avg - r).abs());
                }
            }
        }
        assert!(max_err <= 12, "max error {max_err}");
        assert_eq!(jpeg_scale_eighths(640, 480, Some((96, 96))), 2);
        assert_eq!(jpeg_scale_eighths(640, 480, Some((60, 60))), 1);
        assert_eq!(jpeg_scale_eighths(100, 100, Some((96, 96))), 8);
    }

    #[test]
    fn grey_jpeg_becomes_rgb() {
        let grey = ::image::GrayImage::from_pixel(16, 16, ::image::Luma([200]));
        let mut out = Cursor::new(Vec::new());
        grey.write_to(&mut out, ImageFormat::Jpeg).expect("encode");
        let decoded = decode_rgb(&out.into_inner(), &OPTS).expect("decodes");
        assert_eq!(decoded.rgb.data.len(), 16 * 16 * 3);
        assert!(decoded.rgb.data.iter().all(|&v| (195..=205).contains(&v)));
    }

    #[test]
    fn limits_and_garbage() {
        let png = encode(&gradient(300, 10), ImageFormat::Png);
        let small = DecodeOptions { max_dimension: 200, ..OPTS };
        assert_eq!(decode_rgb(&png, &small).expect_err("too wide").reason, RejectReason::ImageTooLarge);
        let few = DecodeOptions { max_pixels: 2000, ..OPTS };
        assert_eq!(decode_rgb(&png, &few).expect_err("too many pixels").reason, RejectReason::ImageTooLarge);
        let jpeg = encode(&gradient(300, 10), ImageFormat::Jpeg);
        assert_eq!(decode_rgb(&jpeg, &few).expect_err("too many pixels").reason, RejectReason::ImageTooLarge);
        assert_eq!(decode_rgb(b"hello world", &OPTS).expect_err("garbage").reason, RejectReason::UnsupportedFormat);
        let mut truncated = png.clone();
        truncated.truncate(60);
        assert_eq!(decode_rgb(&truncated, &OPTS).expect_err("truncated").reason, RejectReason::ImageDecode);
    }
}

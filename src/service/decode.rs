//! Upload decoding: which compression a NAR arrived in, and readers that undo it
//! while streaming.

use std::io::{Cursor, Read};

use super::ServiceError;

/// The compressions Nix uploads with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Xz,
    Bzip2,
    Brotli,
    Gzip,
}

impl Compression {
    /// From an uploaded NAR file name. `.nar` is either raw or gzip (Nix writes
    /// gzip NARs without a suffix), told apart by sniffing.
    pub fn from_file_name(name: &str) -> Result<Option<Self>, ServiceError> {
        let ext = name.split_once(".nar").map(|(_, e)| e).ok_or_else(|| {
            ServiceError::BadRequest(format!("NAR file name {name:?} has no .nar"))
        })?;
        Ok(match ext {
            "" => None,
            ".zst" => Some(Compression::Zstd),
            ".xz" => Some(Compression::Xz),
            ".bz2" => Some(Compression::Bzip2),
            ".br" => Some(Compression::Brotli),
            ".gz" => Some(Compression::Gzip),
            other => {
                return Err(ServiceError::BadRequest(format!(
                    "unsupported NAR compression {other:?}: use none, zstd, xz, bzip2, br or gzip"
                )))
            }
        })
    }

    /// From a `Content-Encoding` value (for small bodies).
    pub fn from_content_encoding(v: &str) -> Result<Self, ServiceError> {
        Ok(match v.trim().to_ascii_lowercase().as_str() {
            "" | "identity" | "none" => Compression::None,
            "zstd" => Compression::Zstd,
            "xz" => Compression::Xz,
            "bzip2" | "x-bzip2" => Compression::Bzip2,
            "br" => Compression::Brotli,
            "gzip" | "x-gzip" => Compression::Gzip,
            other => {
                return Err(ServiceError::BadRequest(format!(
                    "unsupported Content-Encoding {other:?}"
                )))
            }
        })
    }
}

/// Decide between raw and gzip by the first bytes, without losing them.
pub fn sniff<R: Read + Send + 'static>(
    mut r: R,
) -> std::io::Result<(Compression, Box<dyn Read + Send>)> {
    let mut head = [0u8; 2];
    let mut n = 0;
    while n < head.len() {
        let got = r.read(&mut head[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let kind = if n == 2 && head == [0x1f, 0x8b] {
        Compression::Gzip
    } else {
        Compression::None
    };
    let prefix = Cursor::new(head[..n].to_vec());
    Ok((kind, Box::new(prefix.chain(r))))
}

/// Wrap `r` in a streaming decoder for `c`.
pub fn decoder(c: Compression, r: Box<dyn Read + Send>) -> std::io::Result<Box<dyn Read + Send>> {
    Ok(match c {
        Compression::None => r,
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Compression::Brotli => Box::new(brotli::Decompressor::new(r, 64 * 1024)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
    })
}

/// Decode a small, fully received body, refusing to inflate past `limit`.
pub fn decode_small(c: Compression, body: Vec<u8>, limit: usize) -> Result<Vec<u8>, ServiceError> {
    if c == Compression::None {
        return Ok(body);
    }
    let mut out = Vec::new();
    decoder(c, Box::new(Cursor::new(body)))
        .and_then(|d| d.take(limit as u64 + 1).read_to_end(&mut out))
        .map_err(|e| ServiceError::BadRequest(format!("body does not decode as {c:?}: {e}")))?;
    if out.len() > limit {
        return Err(ServiceError::TooLarge(format!(
            "decoded body is over the {limit}-byte limit"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Compression::from_file_name("x.nar").unwrap(), None);
        assert_eq!(
            Compression::from_file_name("x.nar.zst").unwrap(),
            Some(Compression::Zstd)
        );
        assert!(Compression::from_file_name("x.nar.lz4").is_err());
        assert!(Compression::from_file_name("x.tar").is_err());
    }

    #[test]
    fn every_codec_round_trips() {
        use std::io::Write;
        let data = b"nix-archive-1 and some more bytes".repeat(1000);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let (kind, r) = sniff(Cursor::new(gz.clone())).unwrap();
        assert_eq!(kind, Compression::Gzip);
        let mut out = Vec::new();
        decoder(kind, r).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let zst = zstd::bulk::compress(&data, 1).unwrap();
        assert_eq!(decode_small(Compression::Zstd, zst, 1 << 20).unwrap(), data);
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(decode_small(Compression::Xz, xz, 1 << 20).unwrap(), data);
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(decode_small(Compression::Bzip2, bz, 1 << 20).unwrap(), data);
        let br = {
            let mut out = Vec::new();
            {
                let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                e.write_all(&data).unwrap();
            }
            out
        };
        assert_eq!(
            decode_small(Compression::Brotli, br, 1 << 20).unwrap(),
            data
        );
        assert!(decode_small(Compression::Zstd, b"not zstd".to_vec(), 100).is_err());
        let big = zstd::bulk::compress(&vec![0u8; 10_000], 1).unwrap();
        assert!(matches!(
            decode_small(Compression::Zstd, big, 100),
            Err(ServiceError::TooLarge(_))
        ));
    }
}

//! NumPy `.npy` arrays in a `.npz` archive: the offline dataset format.
//!
//! A `.npz` is a zip of `.npy` files. We write version 1.0 headers, padded so the data starts on a
//! 64-byte boundary (as NumPy itself does), little-endian, C order, entries *stored* (no compression,
//! so a learner can read them at disk speed). Archives larger than 4 GiB use zip64. `np.load` reads
//! them; `meta` is a 0-d unicode array, so `str(np.load(f)["meta"])` gives its JSON.
//!
//! The reader accepts exactly what the writer produces (and `<f8`, `<i8`), which is all the project
//! needs; anything else is a clear error rather than a guess.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

/// The element types we read and write.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    I64(Vec<i64>),
    /// A unicode string (NumPy `<U{n}`), stored as a 0-d array.
    Str(String),
}

/// One array: its shape (C order) and data.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape/data mismatch");
        Self { shape, data: NpyData::F32(data) }
    }

    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape/data mismatch");
        Self { shape, data: NpyData::F64(data) }
    }

    pub fn u8(shape: Vec<usize>, data: Vec<u8>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape/data mismatch");
        Self { shape, data: NpyData::U8(data) }
    }

    pub fn string(s: impl Into<String>) -> Self {
        Self { shape: vec![], data: NpyData::Str(s.into()) }
    }

    /// NumPy's dtype string for this array.
    pub fn descr(&self) -> String {
        match &self.data {
            NpyData::F32(_) => "<f4".into(),
            NpyData::F64(_) => "<f8".into(),
            NpyData::U8(_) => "|u1".into(),
            NpyData::I64(_) => "<i8".into(),
            NpyData::Str(s) => format!("<U{}", s.chars().count().max(1)),
        }
    }

    fn payload_len(&self) -> usize {
        match &self.data {
            NpyData::F32(v) => v.len() * 4,
            NpyData::F64(v) => v.len() * 8,
            NpyData::U8(v) => v.len(),
            NpyData::I64(v) => v.len() * 8,
            NpyData::Str(s) => s.chars().count().max(1) * 4,
        }
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            NpyData::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_u8(&self) -> Option<&[u8]> {
        match &self.data {
            NpyData::U8(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.data {
            NpyData::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Writes the `.npy` bytes (header + data).
    pub fn write_npy<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!("({})", self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", self.descr(), shape);
        // magic(6) + version(2) + header_len(2) + header + '\n' ≡ 0 (mod 64)
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let len = u16::try_from(header.len()).map_err(|_| std::io::Error::other("npy header too long"))?;
        w.write_all(b"\x93NUMPY\x01\x00")?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        // Element-wise little-endian encoding through a buffer: portable and fast enough.
        let mut buf = Vec::with_capacity(1 << 16);
        macro_rules! put {
            ($v:expr) => {{
                for x in $v.iter() {
                    buf.extend_from_slice(&x.to_le_bytes());
                    if buf.len() >= (1 << 16) {
                        w.write_all(&buf)?;
                        buf.clear();
                    }
                }
            }};
        }
        match &self.data {
            NpyData::F32(v) => put!(v),
            NpyData::F64(v) => put!(v),
            NpyData::I64(v) => put!(v),
            NpyData::U8(v) => buf.extend_from_slice(v),
            NpyData::Str(s) => {
                let chars: Vec<u32> = if s.is_empty() { vec![0] } else { s.chars().map(u32::from).collect() };
                put!(chars)
            }
        }
        w.write_all(&buf)
    }

    /// Reads one `.npy` stream.
    pub fn read_npy<R: Read>(r: &mut R) -> Result<Self, NpzError> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(NpzError::Format("not an .npy stream (bad magic)".into()));
        }
        let header_len = match magic[6] {
            1 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b)?;
                usize::from(u16::from_le_bytes(b))
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                r.read_exact(&mut b)?;
                u32::from_le_bytes(b) as usize
            }
            v => return Err(NpzError::Format(format!("unsupported .npy version {v}"))),
        };
        let mut header = vec![0u8; header_len];
        r.read_exact(&mut header)?;
        let header = String::from_utf8(header).map_err(|_| NpzError::Format("header is not UTF-8".into()))?;
        let descr = dict_field(&header, "descr")?;
        let descr = descr.trim_matches(|c| c == '\'' || c == '"');
        if dict_field(&header, "fortran_order")? != "False" {
            return Err(NpzError::Format("Fortran-order arrays are not supported".into()));
        }
        let shape_text = dict_field(&header, "shape")?;
        let shape: Vec<usize> = shape_text
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| NpzError::Format(format!("bad shape {shape_text}"))))
            .collect::<Result<_, _>>()?;
        let n: usize = shape.iter().product();
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes)?;
        let need = |size: usize| -> Result<(), NpzError> {
            if bytes.len() != n * size {
                return Err(NpzError::Format(format!(
                    "{descr} array of shape {shape:?} needs {} bytes, found {}",
                    n * size,
                    bytes.len()
                )));
            }
            Ok(())
        };
        let data = match descr {
            "<f4" => {
                need(4)?;
                NpyData::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
            }
            "<f8" => {
                need(8)?;
                NpyData::F64(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            "<i8" => {
                need(8)?;
                NpyData::I64(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            "|u1" | "<u1" => {
                need(1)?;
                NpyData::U8(bytes)
            }
            d if d.starts_with("<U") && shape.is_empty() => {
                let s: String = bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .take_while(|&c| c != 0)
                    .map(|c| char::from_u32(c).ok_or_else(|| NpzError::Format("bad UTF-32 code point".into())))
                    .collect::<Result<_, _>>()?;
                NpyData::Str(s)
            }
            d => return Err(NpzError::Format(format!("unsupported dtype {d} (shape {shape:?})"))),
        };
        Ok(Self { shape, data })
    }
}

fn dict_field<'a>(header: &'a str, key: &str) -> Result<&'a str, NpzError> {
    let pat = format!("'{key}':");
    let start = header.find(&pat).ok_or_else(|| NpzError::Format(format!("npy header lacks '{key}'")))? + pat.len();
    let rest = header[start..].trim_start();
    let end = if rest.starts_with('(') { rest.find(')').map(|i| i + 1) } else { rest.find([',', '}']) }
        .ok_or_else(|| NpzError::Format(format!("npy header field '{key}' is not terminated")))?;
    Ok(rest[..end].trim())
}

#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Zip(#[from] zip::result::ZipError),
    #[error("{0}")]
    Format(String),
}

/// Writes `arrays` (name → array) to `path` as an uncompressed `.npz`, through a temporary file
/// renamed into place, so a crash never leaves a truncated archive under the final name.
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<(), NpzError> {
    let tmp = path.with_extension("npz.partial");
    let file = File::create(&tmp)?;
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    for (name, array) in arrays {
        let large = array.payload_len() as u64 + 256 >= u64::from(u32::MAX);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(large);
        zip.start_file(format!("{name}.npy"), options)?;
        array.write_npy(&mut zip)?;
    }
    let mut inner = zip.finish()?;
    inner.flush()?;
    inner.get_ref().sync_all()?;
    drop(inner);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads every array of an `.npz` (name without the `.npy` suffix → array).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>, NpzError> {
    let file = File::open(path)?;
    read_npz_from(BufReader::new(file))
}

fn read_npz_from<R: Read + Seek>(reader: R) -> Result<BTreeMap<String, NpyArray>, NpzError> {
    let mut zip = zip::ZipArchive::new(reader)?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let array = NpyArray::read_npy(&mut entry).map_err(|e| NpzError::Format(format!("array `{name}`: {e}")))?;
        out.insert(name, array);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_numpy_compatible_and_aligned() {
        let a = NpyArray::f32(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut bytes = Vec::new();
        a.write_npy(&mut bytes).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + hlen + 24);
        assert_eq!(&bytes[10 + hlen + 4..10 + hlen + 8], &1.0f32.to_le_bytes());
    }

    #[test]
    fn npz_round_trip_keeps_every_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npz");
        let f = NpyArray::f32(vec![1, 2, 2], vec![1.5, -2.0, f32::MIN_POSITIVE, 3.25]);
        let u = NpyArray::u8(vec![4], vec![0, 1, 1, 2]);
        let one = NpyArray::f32(vec![3], vec![1.0, 2.0, 3.0]);
        let s = NpyArray::string("{\"format\": 1, \"ünï\": \"code\"}");
        write_npz(&path, &[("obs", &f), ("step_type", &u), ("w", &one), ("meta", &s)]).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back["obs"], f);
        assert_eq!(back["step_type"], u);
        assert_eq!(back["w"], one);
        assert_eq!(back["meta"], s);
        assert!(!path.with_extension("npz.partial").exists());
    }

    #[test]
    fn truncated_data_is_a_format_error() {
        let a = NpyArray::f32(vec![4], vec![1.0; 4]);
        let mut bytes = Vec::new();
        a.write_npy(&mut bytes).unwrap();
        bytes.truncate(bytes.len() - 3);
        let err = NpyArray::read_npy(&mut bytes.as_slice()).unwrap_err();
        assert!(err.to_string().contains("needs 16 bytes"), "{err}");
    }
}

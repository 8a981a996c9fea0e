//! Encoding the output tensors and writing the output file atomically.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use safetensors::tensor::{serialize, Dtype, TensorView as StView};
use sageattention::Layout;

use super::error::CliError;
use super::input::{file_shape, row_offset, FileDType};

/// What goes into the output file.
#[derive(Debug, Clone)]
pub struct OutputTensors<'a> {
    /// `o` in logical contiguous order `[batch][q_heads][qo_len][head_dim]`.
    pub o: &'a [f32],
    /// Logical shape of `o`.
    pub o_shape: [usize; 4],
    /// Element type of `o` in the file.
    pub dtype: FileDType,
    /// Memory layout of `o` in the file.
    pub layout: Layout,
    /// A packed output: `o_shape` is `[1, q_heads, total_q, head_dim]` and the file holds `o` as
    /// `[total_q, q_heads, head_dim]` (NHD memory) and `lse` as `[q_heads, total_q]`.
    pub packed: bool,
    /// `lse`, `[batch][q_heads][qo_len]`, f32.
    pub lse: Option<&'a [f32]>,
    /// `__metadata__` of the file.
    pub metadata: HashMap<String, String>,
}

/// `o`'s bytes in the file: values rounded to `dtype`, rows stored in `layout`.
pub fn encode_o(o: &[f32], shape: [usize; 4], dtype: FileDType, layout: Layout) -> Vec<u8> {
    let [batch, heads, seq, dim] = shape;
    let mut out = Vec::with_capacity(o.len() * dtype.size_bytes());
    // Visit rows in file order (layout's memory order) and read each from the logical buffer.
    let mut put_row = |b: usize, h: usize, s: usize| {
        let src = row_offset(shape, Layout::Hnd, b, h, s);
        for &x in &o[src..src + dim] {
            dtype.encode_into(x, &mut out);
        }
    };
    for b in 0..batch {
        match layout {
            Layout::Hnd => {
                for h in 0..heads {
                    for s in 0..seq {
                        put_row(b, h, s);
                    }
                }
            }
            Layout::Nhd => {
                for s in 0..seq {
                    for h in 0..heads {
                        put_row(b, h, s);
                    }
                }
            }
        }
    }
    out
}

/// The bytes of the output .safetensors file.
pub fn serialize_output(t: &OutputTensors<'_>) -> Result<Vec<u8>, CliError> {
    let [b, h, s, d] = t.o_shape;
    let (layout, o_file_shape, lse_shape) = if t.packed {
        (Layout::Nhd, vec![s, h, d], vec![h, s])
    } else {
        (
            t.layout,
            file_shape(t.o_shape, t.layout).to_vec(),
            vec![b, h, s],
        )
    };
    let o_bytes = encode_o(t.o, t.o_shape, t.dtype, layout);
    let internal = |e: safetensors::SafeTensorError| {
        CliError::Runtime(format!("cannot encode the output tensors: {e}"))
    };
    let mut views = vec![(
        "o".to_string(),
        StView::new(t.dtype.to_safetensors(), o_file_shape, &o_bytes).map_err(internal)?,
    )];
    let lse_bytes: Vec<u8>;
    if let Some(lse) = t.lse {
        lse_bytes = lse.iter().flat_map(|x| x.to_le_bytes()).collect();
        views.push((
            "lse".to_string(),
            StView::new(Dtype::F32, lse_shape, &lse_bytes).map_err(internal)?,
        ));
    }
    let metadata = if t.metadata.is_empty() {
        None
    } else {
        Some(t.metadata.clone())
    };
    serialize(views, &metadata).map_err(internal)
}

/// A file written atomically: the data goes to a temporary file next to the destination, which is
/// flushed to disk and then renamed over the destination. Until [`AtomicFile::commit`] succeeds the
/// destination is untouched; dropping an uncommitted `AtomicFile` deletes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl AtomicFile {
    /// Checks the destination and creates the temporary file. A destination that is a directory, a
    /// missing directory, or a directory where no file can be created is a usage error.
    pub fn create(dest: &Path) -> Result<Self, CliError> {
        let shown = dest.display();
        if dest.is_dir() {
            return Err(CliError::Usage(format!(
                "--out `{shown}` is a directory; give a file name"
            )));
        }
        let Some(name) = dest.file_name() else {
            return Err(CliError::Usage(format!(
                "--out `{shown}` does not name a file"
            )));
        };
        let dir = parent_dir(dest);
        if !dir.is_dir() {
            return Err(CliError::Usage(format!(
                "cannot write --out `{shown}`: directory `{}` does not exist",
                dir.display()
            )));
        }
        let pid = std::process::id();
        let mut last_err = None;
        for attempt in 0..100u32 {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".sageattn-tmp-{pid}-{attempt}"));
            let tmp = dir.join(tmp_name);
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    return Ok(AtomicFile {
                        dest: dest.to_path_buf(),
                        tmp,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(CliError::Usage(format!(
                        "cannot write --out `{shown}`: cannot create a file in `{}`: {e}",
                        dir.display()
                    )))
                }
            }
        }
        Err(CliError::Runtime(format!(
            "cannot create a temporary file next to `{shown}`: {}",
            last_err.map_or_else(|| "too many attempts".to_string(), |e| e.to_string())
        )))
    }

    /// The temporary file's path.
    #[cfg(test)]
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Writes `bytes`, syncs them to disk, and renames the temporary file over the destination
    /// (then syncs the directory, best effort). On error the destination is untouched and the
    /// temporary file is removed.
    pub fn commit(mut self, bytes: &[u8]) -> Result<(), CliError> {
        let shown = self.dest.display().to_string();
        let io_err = |what: &str, e: std::io::Error| {
            CliError::Runtime(format!("cannot write `{shown}`: {what}: {e}"))
        };
        let mut file = self.file.take().ok_or_else(|| {
            CliError::Runtime(format!("cannot write `{shown}`: no temporary file"))
        })?;
        file.write_all(bytes).map_err(|e| io_err("writing", e))?;
        file.sync_all().map_err(|e| io_err("syncing to disk", e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| io_err("renaming into place", e))?;
        // Renamed: nothing left to clean up.
        self.tmp = PathBuf::new();
        // Make the rename itself durable. Some file systems cannot sync directories; the data is
        // complete either way, so this is best effort.
        if let Ok(dir) = File::open(parent_dir(&self.dest)) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn nhd_encoding_swaps_heads_and_seq() {
        // Logical [1, 2 heads, 3 seq, 1 dim] holding 10*h + s; NHD memory is (s, h).
        let o: Vec<f32> = (0..2)
            .flat_map(|h| (0..3).map(move |s| (10 * h + s) as f32))
            .collect();
        let bytes = encode_o(&o, [1, 2, 3, 1], FileDType::F32, Layout::Nhd);
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
        let hnd = encode_o(&o, [1, 2, 3, 1], FileDType::F32, Layout::Hnd);
        assert_eq!(hnd.len(), 24);
    }

    #[test]
    fn atomic_write_replaces_only_on_commit() {
        let dir = std::env::temp_dir().join(format!("sageattn-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let dest = dir.join("out.safetensors");
        std::fs::write(&dest, b"old").expect("write");

        let f = AtomicFile::create(&dest).expect("create");
        let tmp = f.temp_path().to_path_buf();
        assert!(tmp.exists());
        drop(f);
        assert!(!tmp.exists(), "an uncommitted temporary file is removed");
        assert_eq!(std::fs::read(&dest).expect("read"), b"old");

        let t = OutputTensors {
            o: &[1.0; 64],
            o_shape: [1, 1, 1, 64],
            dtype: FileDType::BF16,
            layout: Layout::Hnd,
            packed: false,
            lse: Some(&[0.5]),
            metadata: HashMap::from([("layout".to_string(), "hnd".to_string())]),
        };
        let bytes = serialize_output(&t).expect("serialize");
        AtomicFile::create(&dest)
            .expect("create")
            .commit(&bytes)
            .expect("commit");
        let written = std::fs::read(&dest).expect("read");
        let st = SafeTensors::deserialize(&written).expect("valid");
        assert_eq!(st.tensor("o").expect("o").dtype(), Dtype::BF16);
        assert_eq!(st.tensor("lse").expect("lse").shape(), &[1, 1, 1]);
        let leftovers = std::fs::read_dir(&dir).expect("ls").count();
        assert_eq!(leftovers, 1, "only the output remains");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn bad_destinations_are_usage_errors() {
        let missing = Path::new("/nonexistent-sageattn-dir/o.safetensors");
        assert!(matches!(
            AtomicFile::create(missing),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            AtomicFile::create(&std::env::temp_dir()),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn packed_output_is_rank_3_with_a_heads_by_rows_lse() {
        // Logical [1, 2 heads, 3 rows, 1 dim] holding 10*h + r: packed memory is (r, h).
        let o: Vec<f32> = (0..2)
            .flat_map(|h| (0..3).map(move |r| (10 * h + r) as f32))
            .collect();
        let lse = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        let t = OutputTensors {
            o: &o,
            o_shape: [1, 2, 3, 1],
            dtype: FileDType::F32,
            layout: Layout::Hnd,
            packed: true,
            lse: Some(&lse),
            metadata: HashMap::new(),
        };
        let bytes = serialize_output(&t).expect("serialize");
        let st = SafeTensors::deserialize(&bytes).expect("valid");
        let o = st.tensor("o").expect("o");
        assert_eq!(o.shape(), &[3, 2, 1]);
        let got: Vec<f32> = o
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
        assert_eq!(st.tensor("lse").expect("lse").shape(), &[2, 3]);
    }
}

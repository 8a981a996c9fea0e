//! Reading Q, K and V from a .safetensors file, and every check that can be made on the CPU before
//! the GPU is touched.

use std::fmt::Write as _;
use std::path::Path;

use safetensors::tensor::{SafeTensors, TensorView as StView};
use sageattention::device_config::{is_supported_head_dim, SUPPORTED_HEAD_DIMS_TEXT};
use sageattention::reference::HostTensor;
use sageattention::tensor_file::{decode_logical, describe_error};
use sageattention::Layout;

pub use sageattention::tensor_file::{file_shape, logical_shape, row_offset, FileDType};

use super::error::CliError;

/// Names of the three input tensors in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorNames {
    /// Query tensor name.
    pub q: String,
    /// Key tensor name.
    pub k: String,
    /// Value tensor name.
    pub v: String,
}

/// Sizes of one attention problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query rows per head.
    pub qo_len: usize,
    /// Key/value rows per head.
    pub kv_len: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl Problem {
    /// Logical shape of the output `o`.
    pub fn o_shape(&self) -> [usize; 4] {
        [self.batch, self.q_heads, self.qo_len, self.head_dim]
    }

    /// Shape of `lse`.
    pub fn lse_shape(&self) -> [usize; 3] {
        [self.batch, self.q_heads, self.qo_len]
    }
}

/// Q, K and V as read from the file: f32 values (exactly the file's values) in logical contiguous
/// order `[batch][heads][seq][head_dim]`, whatever the file's layout.
#[derive(Debug, Clone)]
pub struct LoadedInputs {
    /// Query, `[batch, q_heads, qo_len, head_dim]`.
    pub q: HostTensor,
    /// Key, `[batch, kv_heads, kv_len, head_dim]`.
    pub k: HostTensor,
    /// Value, same shape as K.
    pub v: HostTensor,
    /// The dtype of all three in the file.
    pub dtype: FileDType,
    /// The file's memory layout.
    pub layout: Layout,
    /// The checked sizes.
    pub problem: Problem,
}

/// Dimension names of a file shape in `layout`.
pub fn dim_names(layout: Layout) -> &'static str {
    match layout {
        Layout::Hnd => "[batch, heads, seq, head_dim]",
        Layout::Nhd => "[batch, seq, heads, head_dim]",
    }
}

/// Lower-case layout name, as the flag spells it.
pub fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Hnd => "hnd",
        Layout::Nhd => "nhd",
    }
}

/// Reads the whole file; a missing or unreadable file is an input error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    if path.is_dir() {
        return Err(CliError::Usage(format!(
            "cannot read `{}`: it is a directory, not a .safetensors file",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        CliError::Usage(format!("cannot read `{}`: {why}", path.display()))
    })
}

/// How a tensor is named in messages: its role, plus its file name when that differs.
fn label(role: &str, name: &str) -> String {
    if role == name {
        format!("`{role}`")
    } else {
        format!("{role} (`{name}`)")
    }
}

/// A tensor's header facts, checked one by one.
struct Header<'a> {
    label: String,
    view: StView<'a>,
    dtype: FileDType,
    file_shape: [usize; 4],
}

fn header<'a>(
    st: &SafeTensors<'a>,
    role: &str,
    name: &str,
    path: &str,
    layout: Layout,
) -> Result<Header<'a>, CliError> {
    let label = label(role, name);
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<&String> = st.names();
        names.sort();
        let present = if names.is_empty() {
            "it holds no tensors".to_string()
        } else {
            let mut s = String::from("tensors present: ");
            for (i, n) in names.iter().enumerate() {
                let _ = write!(s, "{}`{n}`", if i > 0 { ", " } else { "" });
            }
            s
        };
        let flag = format!("--{role}-name");
        CliError::Usage(format!(
            "tensor `{name}` ({role}) not found in `{path}`; {present} (choose with {flag})"
        ))
    })?;
    let dtype = FileDType::from_safetensors(view.dtype()).ok_or_else(|| {
        CliError::Usage(format!(
            "tensor {label} has unsupported dtype {:?}; supported: {}",
            view.dtype(),
            FileDType::SUPPORTED
        ))
    })?;
    let shape = view.shape().to_vec();
    let file_shape: [usize; 4] = shape.as_slice().try_into().map_err(|_| {
        CliError::Usage(format!(
            "tensor {label} has rank {} (shape {shape:?}); expected rank 4, {} with --layout {}",
            shape.len(),
            dim_names(layout),
            layout_name(layout)
        ))
    })?;
    Ok(Header {
        label,
        view,
        dtype,
        file_shape,
    })
}

/// Checks the shapes of Q, K and V (given as stored in `layout`) against what the kernels accept;
/// the labels name the tensors in messages.
pub fn check_shapes(
    shapes: [[usize; 4]; 3],
    labels: [&str; 3],
    layout: Layout,
) -> Result<Problem, CliError> {
    let dims = dim_names(layout);
    let [q_file, k_file, v_file] = shapes;
    let [ql, kl, vl] = labels;
    for (file, label) in shapes.iter().zip(labels) {
        if file.contains(&0) {
            return Err(CliError::Usage(format!(
                "tensor {label} is empty: shape {file:?} {dims}; every dimension must be >= 1"
            )));
        }
    }
    let [batch, q_heads, qo_len, head_dim] = logical_shape(q_file, layout);
    let [k_batch, kv_heads, kv_len, k_dim] = logical_shape(k_file, layout);
    if !is_supported_head_dim(head_dim) {
        return Err(CliError::Usage(format!(
            "unsupported head_dim {head_dim} (tensor {ql} has shape {q_file:?} {dims}); \
             supported head_dims: {SUPPORTED_HEAD_DIMS_TEXT}"
        )));
    }
    if k_batch != batch {
        return Err(CliError::Usage(format!(
            "batch mismatch: {ql} has batch {batch} but {kl} has batch {k_batch} \
             ({ql} {q_file:?}, {kl} {k_file:?}, {dims})"
        )));
    }
    if k_dim != head_dim {
        return Err(CliError::Usage(format!(
            "head_dim mismatch: {ql} has head_dim {head_dim} but {kl} has head_dim {k_dim} \
             ({ql} {q_file:?}, {kl} {k_file:?}, {dims})"
        )));
    }
    if v_file != k_file {
        return Err(CliError::Usage(format!(
            "shape mismatch: {vl} must have the shape of {kl}: {kl} is {k_file:?}, {vl} is \
             {v_file:?} {dims}"
        )));
    }
    if q_heads % kv_heads != 0 {
        return Err(CliError::Usage(format!(
            "{ql} has {q_heads} heads, not a multiple of the {kv_heads} heads of {kl}/{vl}: \
             grouped-query attention needs q_heads % kv_heads == 0"
        )));
    }
    Ok(Problem {
        batch,
        q_heads,
        kv_heads,
        qo_len,
        kv_len,
        head_dim,
    })
}

/// Parses a .safetensors file's bytes, finds Q, K and V, checks everything the CPU can check (dtype,
/// rank, emptiness, head_dim, batch/head_dim/shape agreement, GQA divisibility) and converts the
/// data. `path` is only used in messages.
pub fn load_inputs(
    bytes: &[u8],
    path: &str,
    names: &TensorNames,
    layout: Layout,
) -> Result<LoadedInputs, CliError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        CliError::Usage(format!(
            "`{path}` is not a valid .safetensors file: {}",
            describe_error(&e)
        ))
    })?;
    let q = header(&st, "q", &names.q, path, layout)?;
    let k = header(&st, "k", &names.k, path, layout)?;
    let v = header(&st, "v", &names.v, path, layout)?;
    if q.dtype != k.dtype || q.dtype != v.dtype {
        return Err(CliError::Usage(format!(
            "q, k and v must have the same dtype: {} is {}, {} is {}, {} is {}",
            q.label,
            q.dtype.name(),
            k.label,
            k.dtype.name(),
            v.label,
            v.dtype.name()
        )));
    }
    let problem = check_shapes(
        [q.file_shape, k.file_shape, v.file_shape],
        [&q.label, &k.label, &v.label],
        layout,
    )?;
    Ok(LoadedInputs {
        q: decode_logical(q.view.data(), q.dtype, q.file_shape, layout),
        k: decode_logical(k.view.data(), k.dtype, k.file_shape, layout),
        v: decode_logical(v.view.data(), v.dtype, v.file_shape, layout),
        dtype: q.dtype,
        layout,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use safetensors::tensor::{serialize, Dtype};
    use sageattention::DType;

    fn names() -> TensorNames {
        TensorNames {
            q: "q".into(),
            k: "k".into(),
            v: "v".into(),
        }
    }

    fn f16_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
        let mut out = Vec::new();
        for x in values {
            FileDType::F16.encode_into(x, &mut out);
        }
        out
    }

    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, StView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), StView::new(*d, s.clone(), b).expect("view")))
            .collect();
        serialize(views, &None).expect("serialize")
    }

    #[test]
    fn nhd_is_reordered_to_logical_order() {
        // File shape [1, 2 (seq), 3 (heads), 64]; value = 1000*s + 100*h + d/64.
        let shape = vec![1, 2, 3, 64];
        let bytes = f16_bytes((0..2 * 3 * 64).map(|i| {
            let (s, h, d) = (i / (3 * 64), (i / 64) % 3, i % 64);
            (100 * s + 10 * h) as f32 + d as f32 / 64.0
        }));
        let f = file(&[
            ("q", Dtype::F16, shape.clone(), bytes.clone()),
            ("k", Dtype::F16, shape.clone(), bytes.clone()),
            ("v", Dtype::F16, shape, bytes),
        ]);
        let inp = load_inputs(&f, "x", &names(), Layout::Nhd).expect("loads");
        assert_eq!(inp.q.shape, [1, 3, 2, 64]);
        assert_eq!(inp.problem.q_heads, 3);
        assert_eq!(inp.problem.qo_len, 2);
        for h in 0..3 {
            for s in 0..2 {
                for d in [0, 5, 63] {
                    let want = (100 * s + 10 * h) as f32 + d as f32 / 64.0;
                    assert_eq!(inp.q.get(0, h, s, d), f16::from_f32(want).to_f32());
                }
            }
        }
    }

    #[test]
    fn shape_checks() {
        let l = ["`q`", "`k`", "`v`"];
        let ok = check_shapes(
            [[2, 8, 100, 64], [2, 4, 50, 64], [2, 4, 50, 64]],
            l,
            Layout::Hnd,
        );
        assert_eq!(
            ok,
            Ok(Problem {
                batch: 2,
                q_heads: 8,
                kv_heads: 4,
                qo_len: 100,
                kv_len: 50,
                head_dim: 64
            })
        );
        let err = |shapes| match check_shapes(shapes, l, Layout::Hnd) {
            Err(CliError::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        };
        assert!(err([[1, 1, 1, 36], [1, 1, 1, 36], [1, 1, 1, 36]])
            .contains("supported head_dims: every multiple of 8 from 8 to 256"));
        assert!(err([[1, 0, 1, 64], [1, 1, 1, 64], [1, 1, 1, 64]]).contains("empty"));
        assert!(err([[2, 1, 1, 64], [1, 1, 1, 64], [1, 1, 1, 64]]).contains("batch mismatch"));
        assert!(err([[1, 1, 1, 64], [1, 1, 1, 128], [1, 1, 1, 128]]).contains("head_dim mismatch"));
        assert!(err([[1, 1, 1, 64], [1, 1, 2, 64], [1, 1, 3, 64]]).contains("must have the shape"));
        assert!(err([[1, 3, 1, 64], [1, 2, 1, 64], [1, 2, 1, 64]]).contains("not a multiple"));
    }

    #[test]
    fn row_offsets_match_contiguous_strides() {
        let shape = [2, 3, 5, 8];
        for layout in [Layout::Hnd, Layout::Nhd] {
            let st = HostTensor::contiguous_strides(shape, layout == Layout::Nhd);
            for (b, h, s) in [(0, 0, 0), (1, 2, 4), (1, 0, 3), (0, 2, 1)] {
                assert_eq!(
                    row_offset(shape, layout, b, h, s),
                    b * st[0] + h * st[1] + s * st[2]
                );
            }
        }
    }

    #[test]
    fn f32_decodes_exactly_and_gpu_dtype_is_f16() {
        let bytes: Vec<u8> = (0..64)
            .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
            .collect();
        let shape = vec![1, 1, 1, 64];
        let f = file(&[
            ("q", Dtype::F32, shape.clone(), bytes.clone()),
            ("k", Dtype::F32, shape.clone(), bytes.clone()),
            ("v", Dtype::F32, shape, bytes),
        ]);
        let inp = load_inputs(&f, "x", &names(), Layout::Hnd).expect("loads");
        assert_eq!(inp.dtype, FileDType::F32);
        assert_eq!(inp.dtype.gpu_dtype(), DType::F16);
        assert_eq!(inp.v.get(0, 0, 0, 7), 7.0_f32 * 0.1);
    }
}

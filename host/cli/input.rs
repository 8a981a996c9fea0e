//! Reading Q, K and V from a .safetensors file, and every check that can be made on the CPU before
//! the GPU is touched.

use std::fmt::Write as _;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView as StView};
use sageattention::device_config::{is_supported_head_dim, SUPPORTED_HEAD_DIMS_TEXT};
use sageattention::reference::HostTensor;
use sageattention::tensor_file::{decode_logical, describe_error};
use sageattention::varlen::VarlenBatch;
use sageattention::Layout;

pub use sageattention::tensor_file::{file_shape, logical_shape, row_offset, FileDType};

use super::error::CliError;

/// Names of the input tensors in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorNames {
    /// Query tensor name.
    pub q: String,
    /// Key tensor name.
    pub k: String,
    /// Value tensor name.
    pub v: String,
    /// Name of Q's prefix sums; the input is packed (variable-length) when the file holds it.
    pub cu_seqlens_q: String,
    /// Name of K's prefix sums.
    pub cu_seqlens_k: String,
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

/// The sequences of a packed (variable-length) input: its prefix sums as read, the maximum
/// lengths the call is given, and the sequences the library's rules make of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarlenInput {
    /// Q's prefix sums (`batch + 1` entries).
    pub cu_seqlens_q: Vec<i32>,
    /// K's prefix sums.
    pub cu_seqlens_k: Vec<i32>,
    /// The longest query sequence allowed (`--max-seqlen-q`, or the longest there is).
    pub max_seqlen_q: usize,
    /// The longest key sequence allowed (`--max-seqlen-k`, or the longest there is).
    pub max_seqlen_k: usize,
    /// The checked sequences.
    pub batch: VarlenBatch,
}

/// The maximum sequence lengths a packed input is run with, when given by flags (`None`: the
/// longest sequence of the prefix sums).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxSeqlens {
    /// `--max-seqlen-q`.
    pub q: Option<usize>,
    /// `--max-seqlen-k`.
    pub k: Option<usize>,
}

/// Q, K and V as read from the file: f32 values (exactly the file's values) in logical contiguous
/// order `[batch][heads][seq][head_dim]`, whatever the file's layout. A packed input
/// (`[total, heads, head_dim]` with `cu_seqlens_q`/`cu_seqlens_k`) is held as batch 1 and
/// seq = total, the library's packed view, with `layout` NHD (its memory order).
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
    /// The sequences, for a packed input.
    pub varlen: Option<VarlenInput>,
}

/// Dimension names of a packed tensor.
pub const PACKED_DIMS: &str = "[total, heads, head_dim]";

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

/// The tensor `name` (playing `role`), or an error naming it and listing the tensors present.
fn find<'a>(
    st: &SafeTensors<'a>,
    role: &str,
    name: &str,
    path: &str,
) -> Result<StView<'a>, CliError> {
    st.tensor(name).map_err(|_| {
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
        let flag = format!("--{}-name", role.replace('_', "-"));
        CliError::Usage(format!(
            "tensor `{name}` ({role}) not found in `{path}`; {present} (choose with {flag})"
        ))
    })
}

/// What the rank error says a tensor should look like.
enum Expect {
    /// A batched tensor in this layout.
    Batched(Layout),
    /// A packed tensor, `[total, heads, head_dim]`.
    Packed,
}

/// Q, K or V: found, of a supported dtype, of the expected rank (4 batched, 3 packed; a packed
/// `[total, heads, head_dim]` is returned as the NHD file shape `[1, total, heads, head_dim]`).
fn header<'a>(
    st: &SafeTensors<'a>,
    role: &str,
    name: &str,
    path: &str,
    expect: Expect,
) -> Result<Header<'a>, CliError> {
    let label = label(role, name);
    let view = find(st, role, name, path)?;
    let dtype = FileDType::from_safetensors(view.dtype()).ok_or_else(|| {
        CliError::Usage(format!(
            "tensor {label} has unsupported dtype {:?}; supported: {}",
            view.dtype(),
            FileDType::SUPPORTED
        ))
    })?;
    let shape = view.shape().to_vec();
    let file_shape: [usize; 4] = match expect {
        Expect::Batched(layout) => shape.as_slice().try_into().map_err(|_| {
            CliError::Usage(format!(
                "tensor {label} has rank {} (shape {shape:?}); expected rank 4, {} with --layout \
                 {}",
                shape.len(),
                dim_names(layout),
                layout_name(layout)
            ))
        })?,
        Expect::Packed => match shape.as_slice() {
            &[total, heads, dim] => [1, total, heads, dim],
            _ => {
                return Err(CliError::Usage(format!(
                    "tensor {label} has rank {} (shape {shape:?}); a packed input (the file holds \
                     cu_seqlens) needs rank 3, {PACKED_DIMS}",
                    shape.len()
                )))
            }
        },
    };
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

/// Checks the shapes of packed Q, K and V (`[total, heads, head_dim]`, given as the NHD file shapes
/// `[1, total, heads, head_dim]` that [`header`] makes of them); the labels name the tensors.
pub fn check_packed_shapes(
    shapes: [[usize; 4]; 3],
    labels: [&str; 3],
) -> Result<Problem, CliError> {
    let packed = |s: [usize; 4]| [s[1], s[2], s[3]];
    let [q_file, k_file, v_file] = shapes.map(packed);
    let [ql, kl, vl] = labels;
    for (file, label) in [q_file, k_file, v_file].iter().zip(labels) {
        if file.contains(&0) {
            return Err(CliError::Usage(format!(
                "tensor {label} is empty: shape {file:?} {PACKED_DIMS}; every dimension must be \
                 >= 1"
            )));
        }
    }
    let [total_q, q_heads, head_dim] = q_file;
    let [total_k, kv_heads, k_dim] = k_file;
    if !is_supported_head_dim(head_dim) {
        return Err(CliError::Usage(format!(
            "unsupported head_dim {head_dim} (tensor {ql} has shape {q_file:?} {PACKED_DIMS}); \
             supported head_dims: {SUPPORTED_HEAD_DIMS_TEXT}"
        )));
    }
    if k_dim != head_dim {
        return Err(CliError::Usage(format!(
            "head_dim mismatch: {ql} has head_dim {head_dim} but {kl} has head_dim {k_dim} \
             ({ql} {q_file:?}, {kl} {k_file:?}, {PACKED_DIMS})"
        )));
    }
    if v_file != k_file {
        return Err(CliError::Usage(format!(
            "shape mismatch: {vl} must have the shape of {kl}: {kl} is {k_file:?}, {vl} is \
             {v_file:?} {PACKED_DIMS}"
        )));
    }
    if q_heads % kv_heads != 0 {
        return Err(CliError::Usage(format!(
            "{ql} has {q_heads} heads, not a multiple of the {kv_heads} heads of {kl}/{vl}: \
             grouped-query attention needs q_heads % kv_heads == 0"
        )));
    }
    Ok(Problem {
        batch: 1,
        q_heads,
        kv_heads,
        qo_len: total_q,
        kv_len: total_k,
        head_dim,
    })
}

/// Prefix sums `name` (playing `role`): a rank-1 I32 tensor.
fn prefix_sums(
    st: &SafeTensors<'_>,
    role: &str,
    name: &str,
    path: &str,
) -> Result<Vec<i32>, CliError> {
    let view = find(st, role, name, path)?;
    let label = label(role, name);
    if view.dtype() != Dtype::I32 {
        return Err(CliError::Usage(format!(
            "tensor {label} has dtype {:?}; cu_seqlens must be I32 (int32 prefix sums, e.g. \
             `torch.tensor([0, 100, 612], dtype=torch.int32)`)",
            view.dtype()
        )));
    }
    if view.shape().len() != 1 {
        return Err(CliError::Usage(format!(
            "tensor {label} has rank {} (shape {:?}); cu_seqlens is rank 1, [batch + 1]",
            view.shape().len(),
            view.shape()
        )));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The longest sequence the prefix sums describe (0 for none; a decreasing pair counts as 0,
/// the library's check names it).
pub fn longest(cu: &[i32]) -> usize {
    cu.windows(2)
        .map(|w| usize::try_from(i64::from(w[1]) - i64::from(w[0])).unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// Checks the prefix sums by the library's rules ([`VarlenBatch::new`], the same errors as the
/// call), with the maximum lengths given or the longest there are.
pub fn check_varlen(
    cu_seqlens_q: Vec<i32>,
    cu_seqlens_k: Vec<i32>,
    totals: (usize, usize),
    max: MaxSeqlens,
) -> Result<VarlenInput, CliError> {
    let max_seqlen_q = max.q.unwrap_or_else(|| longest(&cu_seqlens_q));
    let max_seqlen_k = max.k.unwrap_or_else(|| longest(&cu_seqlens_k));
    let batch = VarlenBatch::new(
        &cu_seqlens_q,
        &cu_seqlens_k,
        totals,
        (max_seqlen_q, max_seqlen_k),
    )?;
    Ok(VarlenInput {
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        batch,
    })
}

/// How the inputs are given: `--layout` when it was passed, and the maximum sequence lengths
/// (packed inputs only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputOptions {
    /// `--layout`, if given (`None`: HND for batched inputs).
    pub layout: Option<Layout>,
    /// `--max-seqlen-q`, `--max-seqlen-k`.
    pub max_seqlens: MaxSeqlens,
}

/// Parses a .safetensors file's bytes, finds Q, K and V (and, for a packed input, the prefix sums),
/// checks everything the CPU can check (dtype, rank, emptiness, head_dim, batch/head_dim/shape
/// agreement, GQA divisibility, the prefix sums by the library's rules) and converts the data.
/// `path` is only used in messages.
pub fn load_inputs(
    bytes: &[u8],
    path: &str,
    names: &TensorNames,
    how: InputOptions,
) -> Result<LoadedInputs, CliError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        CliError::Usage(format!(
            "`{path}` is not a valid .safetensors file: {}",
            describe_error(&e)
        ))
    })?;
    let has = |name: &str| st.names().iter().any(|n| n.as_str() == name);
    let (cu_q_name, cu_k_name) = (&names.cu_seqlens_q, &names.cu_seqlens_k);
    let packed = match (has(cu_q_name), has(cu_k_name)) {
        (true, true) => true,
        (false, false) => false,
        (true, false) | (false, true) => {
            let (present, missing, flag) = if has(cu_q_name) {
                (cu_q_name, cu_k_name, "--cu-seqlens-k-name")
            } else {
                (cu_k_name, cu_q_name, "--cu-seqlens-q-name")
            };
            return Err(CliError::Usage(format!(
                "`{path}` holds `{present}` but not `{missing}`: a packed input needs both \
                 prefix sums (choose the name with {flag})"
            )));
        }
    };
    if packed {
        if let Some(layout) = how.layout {
            return Err(CliError::Usage(format!(
                "--layout {} does not apply to a packed input: with `{cu_q_name}` and \
                 `{cu_k_name}` in the file, q, k and v are {PACKED_DIMS}",
                layout_name(layout)
            )));
        }
    } else if how.max_seqlens != MaxSeqlens::default() {
        return Err(CliError::Usage(format!(
            "--max-seqlen-q/--max-seqlen-k apply to packed inputs only, and `{path}` holds no \
             `{cu_q_name}`/`{cu_k_name}`"
        )));
    }
    let layout = if packed {
        Layout::Nhd
    } else {
        how.layout.unwrap_or(Layout::Hnd)
    };
    let expect = || {
        if packed {
            Expect::Packed
        } else {
            Expect::Batched(layout)
        }
    };
    let q = header(&st, "q", &names.q, path, expect())?;
    let k = header(&st, "k", &names.k, path, expect())?;
    let v = header(&st, "v", &names.v, path, expect())?;
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
    let shapes = [q.file_shape, k.file_shape, v.file_shape];
    let labels = [q.label.as_str(), k.label.as_str(), v.label.as_str()];
    let (problem, varlen) = if packed {
        let problem = check_packed_shapes(shapes, labels)?;
        let cu_q = prefix_sums(&st, "cu_seqlens_q", cu_q_name, path)?;
        let cu_k = prefix_sums(&st, "cu_seqlens_k", cu_k_name, path)?;
        let totals = (problem.qo_len, problem.kv_len);
        (
            problem,
            Some(check_varlen(cu_q, cu_k, totals, how.max_seqlens)?),
        )
    } else {
        (check_shapes(shapes, labels, layout)?, None)
    };
    Ok(LoadedInputs {
        q: decode_logical(q.view.data(), q.dtype, q.file_shape, layout),
        k: decode_logical(k.view.data(), k.dtype, k.file_shape, layout),
        v: decode_logical(v.view.data(), v.dtype, v.file_shape, layout),
        dtype: q.dtype,
        layout,
        problem,
        varlen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use safetensors::tensor::serialize;
    use sageattention::DType;

    fn names() -> TensorNames {
        TensorNames {
            q: "q".into(),
            k: "k".into(),
            v: "v".into(),
            cu_seqlens_q: "cu_seqlens_q".into(),
            cu_seqlens_k: "cu_seqlens_k".into(),
        }
    }

    fn layout(l: Layout) -> InputOptions {
        InputOptions {
            layout: Some(l),
            ..InputOptions::default()
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
        let inp = load_inputs(&f, "x", &names(), layout(Layout::Nhd)).expect("loads");
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
        let inp = load_inputs(&f, "x", &names(), layout(Layout::Hnd)).expect("loads");
        assert_eq!(inp.dtype, FileDType::F32);
        assert_eq!(inp.dtype.gpu_dtype(), DType::F16);
        assert_eq!(inp.v.get(0, 0, 0, 7), 7.0_f32 * 0.1);
    }

    fn i32_bytes(values: &[i32]) -> Vec<u8> {
        values.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A packed file: q [10, 4, 64], k/v [12, 2, 64], cu_seqlens_q [0, 3, 3, 10] and
    /// cu_seqlens_k `cu_k`; value = 1000 r + 10 h + d/64.
    fn packed_file(cu_k: &[i32]) -> Vec<u8> {
        let rows = |total: usize, heads: usize| {
            f16_bytes((0..total * heads * 64).map(move |i| {
                let (r, h, d) = (i / (heads * 64), (i / 64) % heads, i % 64);
                (10 * r + h) as f32 + d as f32 / 64.0
            }))
        };
        file(&[
            ("q", Dtype::F16, vec![10, 4, 64], rows(10, 4)),
            ("k", Dtype::F16, vec![12, 2, 64], rows(12, 2)),
            ("v", Dtype::F16, vec![12, 2, 64], rows(12, 2)),
            (
                "cu_seqlens_q",
                Dtype::I32,
                vec![4],
                i32_bytes(&[0, 3, 3, 10]),
            ),
            (
                "cu_seqlens_k",
                Dtype::I32,
                vec![cu_k.len()],
                i32_bytes(cu_k),
            ),
        ])
    }

    fn usage(r: Result<LoadedInputs, CliError>) -> String {
        match r {
            Err(CliError::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn packed_input_is_read_as_the_librarys_packed_view() {
        let f = packed_file(&[0, 0, 5, 12]);
        let inp = load_inputs(&f, "x", &names(), InputOptions::default()).expect("loads");
        assert_eq!(inp.layout, Layout::Nhd);
        assert_eq!(inp.q.shape, [1, 4, 10, 64]);
        assert_eq!(inp.k.shape, [1, 2, 12, 64]);
        assert_eq!(inp.q.get(0, 3, 7, 32), f16::from_f32(73.5).to_f32());
        let p = inp.problem;
        assert_eq!(
            (p.batch, p.q_heads, p.kv_heads, p.qo_len, p.kv_len),
            (1, 4, 2, 10, 12)
        );
        let v = inp.varlen.expect("packed");
        assert_eq!(v.cu_seqlens_q, [0, 3, 3, 10]);
        assert_eq!((v.max_seqlen_q, v.max_seqlen_k), (7, 7));
        assert_eq!(v.batch.batch(), 3);
        // Given maximum lengths are passed on (and checked by the library's rules).
        let how = InputOptions {
            max_seqlens: MaxSeqlens {
                q: Some(100),
                k: None,
            },
            ..InputOptions::default()
        };
        let v = load_inputs(&f, "x", &names(), how).unwrap().varlen.unwrap();
        assert_eq!((v.max_seqlen_q, v.max_seqlen_k), (100, 7));
        let how = InputOptions {
            max_seqlens: MaxSeqlens {
                q: Some(6),
                k: None,
            },
            ..InputOptions::default()
        };
        let m = usage(load_inputs(&f, "x", &names(), how));
        assert!(
            m.contains("above the max_seqlen") && m.contains("cu_seqlens_q"),
            "{m}"
        );
    }

    #[test]
    fn packed_input_errors() {
        let none = InputOptions::default();
        let m = usage(load_inputs(
            &packed_file(&[0, 5, 4, 12]),
            "x",
            &names(),
            none,
        ));
        assert!(
            m.contains("not monotone") && m.contains("cu_seqlens_k"),
            "{m}"
        );
        let m = usage(load_inputs(&packed_file(&[0, 5, 12]), "x", &names(), none));
        assert!(m.contains("cu_seqlens_q describes 3 sequences"), "{m}");
        let m = usage(load_inputs(
            &packed_file(&[0, 5, 6, 13]),
            "x",
            &names(),
            none,
        ));
        assert!(m.contains("ends at 13") && m.contains("12 rows"), "{m}");
        let m = usage(load_inputs(
            &packed_file(&[1, 5, 6, 12]),
            "x",
            &names(),
            none,
        ));
        assert!(m.contains("start at 0"), "{m}");
        let m = usage(load_inputs(
            &packed_file(&[0, 5, 6, 12]),
            "x",
            &names(),
            layout(Layout::Hnd),
        ));
        assert!(m.contains("--layout hnd does not apply"), "{m}");
        // Batched input with --max-seqlen-q.
        let shape = vec![1, 1, 8, 64];
        let b = f16_bytes((0..512).map(|i| i as f32));
        let batched = file(&[
            ("q", Dtype::F16, shape.clone(), b.clone()),
            ("k", Dtype::F16, shape.clone(), b.clone()),
            ("v", Dtype::F16, shape, b),
        ]);
        let how = InputOptions {
            max_seqlens: MaxSeqlens {
                q: Some(8),
                k: None,
            },
            ..InputOptions::default()
        };
        let m = usage(load_inputs(&batched, "x", &names(), how));
        assert!(m.contains("packed inputs only"), "{m}");
    }

    #[test]
    fn packed_shape_checks() {
        let l = ["`q`", "`k`", "`v`"];
        let p = |s: [usize; 3]| [1, s[0], s[1], s[2]];
        let err = |q, k, v| match check_packed_shapes([p(q), p(k), p(v)], l) {
            Err(CliError::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        };
        assert!(err([5, 2, 36], [5, 2, 36], [5, 2, 36])
            .contains("unsupported head_dim 36 (tensor `q` has shape [5, 2, 36]"));
        assert!(err([5, 2, 264], [5, 2, 264], [5, 2, 264])
            .contains("supported head_dims: every multiple of 8 from 8 to 256"));
        assert!(err([5, 2, 64], [5, 2, 128], [5, 2, 128]).contains("head_dim mismatch"));
        assert!(err([5, 2, 64], [5, 2, 64], [6, 2, 64]).contains("must have the shape"));
        assert!(err([5, 3, 64], [5, 2, 64], [5, 2, 64]).contains("not a multiple"));
        assert!(err([0, 3, 64], [5, 3, 64], [5, 3, 64]).contains("empty"));
        assert_eq!(longest(&[0, 3, 3, 10]), 7);
        assert_eq!(longest(&[0, 5, 2]), 5);
        assert_eq!(longest(&[0]), 0);
    }
}

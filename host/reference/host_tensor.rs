//! [`HostTensor`]: a 4-d `f32` tensor on the host in logical order, the input of every reference.

/// A 4-d `f32` tensor on the host, described in **logical order** `[batch, heads, seq, head_dim]`.
///
/// `strides` are in elements and in the same logical order, whatever the memory layout, so
/// `data[b*strides[0] + h*strides[1] + s*strides[2] + d*strides[3]]` is element `(b, h, s, d)`.
/// GPU inputs in f16/bf16/f32 convert to `f32` exactly, so a `HostTensor` built from the same data the
/// GPU reads represents exactly the GPU's input.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Element storage; only the elements addressed by `shape`/`strides` are meaningful.
    pub data: Vec<f32>,
    /// Logical shape `[batch, heads, seq, head_dim]`.
    pub shape: [usize; 4],
    /// Strides in elements, in logical order `[batch, heads, seq, head_dim]`.
    pub strides: [usize; 4],
}

impl HostTensor {
    /// Contiguous strides for `shape`: memory order (batch, heads, seq, dim) when `nhd` is false
    /// (HND), (batch, seq, heads, dim) when `nhd` is true (NHD). Returned in logical order.
    pub fn contiguous_strides(shape: [usize; 4], nhd: bool) -> [usize; 4] {
        let [_, heads, seq, head_dim] = shape;
        if nhd {
            [seq * heads * head_dim, head_dim, heads * head_dim, 1]
        } else {
            [heads * seq * head_dim, seq * head_dim, head_dim, 1]
        }
    }

    /// A zero-filled contiguous tensor in HND (`nhd == false`) or NHD (`nhd == true`) memory order.
    pub fn contiguous(shape: [usize; 4], nhd: bool) -> Self {
        Self {
            data: vec![0.0; shape.iter().product()],
            shape,
            strides: Self::contiguous_strides(shape, nhd),
        }
    }

    /// A zero-filled tensor with arbitrary strides (e.g. padded rows), with just enough storage.
    pub fn with_strides(shape: [usize; 4], strides: [usize; 4]) -> Self {
        Self {
            data: vec![0.0; required_len(shape, strides)],
            shape,
            strides,
        }
    }

    /// Wrap existing storage.
    ///
    /// # Panics
    /// If `data` is too short for the largest offset that `shape` and `strides` address.
    pub fn from_parts(data: Vec<f32>, shape: [usize; 4], strides: [usize; 4]) -> Self {
        let needed = required_len(shape, strides);
        assert!(
            data.len() >= needed,
            "HostTensor::from_parts: shape {shape:?} with strides {strides:?} needs {needed} \
             elements, data has {}",
            data.len()
        );
        Self {
            data,
            shape,
            strides,
        }
    }

    /// A contiguous tensor (HND or NHD memory order) with `element(b, h, s, d)` at every position.
    pub fn from_fn(
        shape: [usize; 4],
        nhd: bool,
        mut element: impl FnMut(usize, usize, usize, usize) -> f32,
    ) -> Self {
        let mut tensor = Self::contiguous(shape, nhd);
        let [batch, heads, seq, head_dim] = shape;
        for b in 0..batch {
            for h in 0..heads {
                for s in 0..seq {
                    for d in 0..head_dim {
                        tensor.set(b, h, s, d, element(b, h, s, d));
                    }
                }
            }
        }
        tensor
    }

    /// Batch size (`shape[0]`).
    pub fn batch(&self) -> usize {
        self.shape[0]
    }

    /// Number of heads (`shape[1]`).
    pub fn heads(&self) -> usize {
        self.shape[1]
    }

    /// Sequence length (`shape[2]`).
    pub fn seq(&self) -> usize {
        self.shape[2]
    }

    /// Channels per token (`shape[3]`).
    pub fn head_dim(&self) -> usize {
        self.shape[3]
    }

    /// Position of element `(b, h, s, d)` in [`HostTensor::data`].
    ///
    /// # Panics
    /// If an index is outside `shape` (checked so that a wrong index never silently aliases another
    /// element through the strides).
    pub fn offset(&self, b: usize, h: usize, s: usize, d: usize) -> usize {
        let index = [b, h, s, d];
        assert!(
            index.iter().zip(&self.shape).all(|(i, n)| i < n),
            "HostTensor index {index:?} out of range for shape {:?}",
            self.shape
        );
        index.iter().zip(&self.strides).map(|(i, st)| i * st).sum()
    }

    /// Element `(b, h, s, d)`.
    ///
    /// # Panics
    /// If an index is outside `shape`.
    pub fn get(&self, b: usize, h: usize, s: usize, d: usize) -> f32 {
        self.data[self.offset(b, h, s, d)]
    }

    /// Overwrite element `(b, h, s, d)`.
    ///
    /// # Panics
    /// If an index is outside `shape`.
    pub fn set(&mut self, b: usize, h: usize, s: usize, d: usize, value: f32) {
        let offset = self.offset(b, h, s, d);
        self.data[offset] = value;
    }

    /// The rows `start..start + len` of every (batch, head): a tensor of shape
    /// `[batch, heads, len, head_dim]` with the same strides, holding a copy of just the storage
    /// those rows span (a sequence of a packed batch, for the varlen references).
    ///
    /// # Panics
    /// If `start + len` exceeds the sequence length.
    pub fn rows(&self, start: usize, len: usize) -> Self {
        assert!(
            start + len <= self.seq(),
            "HostTensor::rows: rows {start}..{} out of range for shape {:?}",
            start + len,
            self.shape
        );
        let mut shape = self.shape;
        shape[2] = len;
        let first = start * self.strides[2];
        let needed = required_len(shape, self.strides);
        Self::from_parts(
            self.data[first..first + needed].to_vec(),
            shape,
            self.strides,
        )
    }

    /// Copy into a contiguous `[batch][heads][seq][head_dim]` `f64` vector, applying `convert` to
    /// each element (used to gather K and V once per call instead of striding in the hot loop).
    pub(super) fn to_contiguous_f64(&self, convert: impl Fn(f32) -> f64) -> Vec<f64> {
        let [batch, heads, seq, head_dim] = self.shape;
        let mut out = Vec::with_capacity(batch * heads * seq * head_dim);
        for b in 0..batch {
            for h in 0..heads {
                for s in 0..seq {
                    for d in 0..head_dim {
                        out.push(convert(self.get(b, h, s, d)));
                    }
                }
            }
        }
        out
    }
}

/// Number of elements a buffer needs for `shape` and `strides` (largest offset + 1; 0 if empty).
fn required_len(shape: [usize; 4], strides: [usize; 4]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    1 + shape
        .iter()
        .zip(&strides)
        .map(|(n, st)| (n - 1) * st)
        .sum::<usize>()
}

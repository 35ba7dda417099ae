//! Kiln's types: the scalar element types and the kinds of values a kernel handles
//! (scalars, global slices, shared/register arrays, 16-byte vectors, tensor-core fragments).

use serde::{Deserialize, Serialize};

/// A scalar element type. `Param(i)` is the i-th generic parameter of the function
/// (an element type `T: Float`), which specialisation replaces by a concrete type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum Scalar {
    /// `bool` (CUDA `bool`).
    Bool,
    /// `u8` (CUDA `unsigned char`).
    U8,
    /// `u16` (CUDA `unsigned short`).
    U16,
    /// `u32` (CUDA `unsigned int`).
    U32,
    /// `u64` (CUDA `unsigned long long`).
    U64,
    /// `i32` (CUDA `int`).
    I32,
    /// `i64` (CUDA `long long`).
    I64,
    /// `f16`, IEEE half precision (CUDA `kiln_f16`, a storage type from the prelude).
    F16,
    /// `bf16`, bfloat16 (CUDA `kiln_bf16`, a storage type from the prelude).
    Bf16,
    /// `f32` (CUDA `float`).
    F32,
    /// `f64` (CUDA `double`).
    F64,
    /// The `T: Float` parameter at this index of the function's generics, until
    /// specialisation binds it.
    Param(u8),
}

impl Scalar {
    /// Every concrete scalar with its Rust spelling.
    pub const CONCRETE: [(Scalar, &'static str); 11] = [
        (Scalar::Bool, "bool"),
        (Scalar::U8, "u8"),
        (Scalar::U16, "u16"),
        (Scalar::U32, "u32"),
        (Scalar::U64, "u64"),
        (Scalar::I32, "i32"),
        (Scalar::I64, "i64"),
        (Scalar::F16, "f16"),
        (Scalar::Bf16, "bf16"),
        (Scalar::F32, "f32"),
        (Scalar::F64, "f64"),
    ];

    /// The scalar named `name` in Rust source, if it is one of Kiln's element types.
    pub fn from_rust(name: &str) -> Option<Scalar> {
        Self::CONCRETE
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(s, _)| *s)
    }

    /// The Rust spelling (`Param` types print as `T#i`; callers resolve names themselves).
    pub fn rust_name(self) -> String {
        match Self::CONCRETE.iter().find(|(s, _)| *s == self) {
            Some((_, n)) => (*n).to_string(),
            None => match self {
                Scalar::Param(i) => format!("<type parameter #{i}>"),
                _ => unreachable!("every non-parameter scalar is listed in CONCRETE"),
            },
        }
    }

    /// Floating-point types, including a generic `T: Float`.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Scalar::F16 | Scalar::Bf16 | Scalar::F32 | Scalar::F64 | Scalar::Param(_)
        )
    }

    /// 16-bit floats, which CUDA computes through `float`.
    pub fn is_half(self) -> bool {
        matches!(self, Scalar::F16 | Scalar::Bf16)
    }

    /// Integer types (not `bool`).
    pub fn is_int(self) -> bool {
        matches!(
            self,
            Scalar::U8 | Scalar::U16 | Scalar::U32 | Scalar::U64 | Scalar::I32 | Scalar::I64
        )
    }

    /// Signed integer types.
    pub fn is_signed_int(self) -> bool {
        matches!(self, Scalar::I32 | Scalar::I64)
    }

    /// Size in bytes of a concrete scalar; `None` for a type parameter.
    pub fn size_bytes(self) -> Option<u64> {
        Some(match self {
            Scalar::Bool | Scalar::U8 => 1,
            Scalar::U16 | Scalar::F16 | Scalar::Bf16 => 2,
            Scalar::U32 | Scalar::I32 | Scalar::F32 => 4,
            Scalar::U64 | Scalar::I64 | Scalar::F64 => 8,
            Scalar::Param(_) => return None,
        })
    }

    /// The values an integer (or bool, as 0..=1) type holds, as an inclusive range.
    pub fn int_range(self) -> (i128, i128) {
        match self {
            Scalar::Bool => (0, 1),
            Scalar::U8 => (0, u8::MAX as i128),
            Scalar::U16 => (0, u16::MAX as i128),
            Scalar::U32 => (0, u32::MAX as i128),
            Scalar::U64 => (0, u64::MAX as i128),
            Scalar::I32 => (i32::MIN as i128, i32::MAX as i128),
            _ => (i64::MIN as i128, i64::MAX as i128),
        }
    }

    /// The unsigned integer type of the same width, for `to_bits`/`from_bits`.
    pub fn bits_type(self) -> Option<Scalar> {
        match self {
            Scalar::F16 | Scalar::Bf16 => Some(Scalar::U16),
            Scalar::F32 => Some(Scalar::U32),
            Scalar::F64 => Some(Scalar::U64),
            _ => None,
        }
    }
}

/// Where an array lives on the device.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Space {
    /// `__shared__`: one copy per block.
    Shared,
    /// Registers (or local memory): one copy per thread.
    Local,
}

/// A comptime length: a literal or an expression over comptime parameters,
/// evaluated when the kernel is specialised.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Len {
    /// A literal length.
    Lit(u64),
    /// A `const` parameter, by name.
    Param(String),
    /// `a op b` of two comptime lengths.
    Bin(ConstOp, Box<Len>, Box<Len>),
}

/// Operators allowed in comptime lengths.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ConstOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (integer division)
    Div,
    /// `%`
    Rem,
    /// `<<`
    Shl,
    /// `>>`
    Shr,
}

impl ConstOp {
    /// The operator as Rust and C write it.
    pub fn symbol(self) -> &'static str {
        match self {
            ConstOp::Add => "+",
            ConstOp::Sub => "-",
            ConstOp::Mul => "*",
            ConstOp::Div => "/",
            ConstOp::Rem => "%",
            ConstOp::Shl => "<<",
            ConstOp::Shr => ">>",
        }
    }
}

impl Len {
    /// The value of the length given the comptime values (`None` if a name is unbound or
    /// the arithmetic overflows/divides by zero).
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<i128>) -> Option<i128> {
        Some(match self {
            Len::Lit(v) => *v as i128,
            Len::Param(name) => lookup(name)?,
            Len::Bin(op, a, b) => {
                let (a, b) = (a.eval(lookup)?, b.eval(lookup)?);
                match op {
                    ConstOp::Add => a.checked_add(b)?,
                    ConstOp::Sub => a.checked_sub(b)?,
                    ConstOp::Mul => a.checked_mul(b)?,
                    ConstOp::Div => a.checked_div(b)?,
                    ConstOp::Rem => a.checked_rem(b)?,
                    ConstOp::Shl => a.checked_shl(u32::try_from(b).ok()?)?,
                    ConstOp::Shr => a.checked_shr(u32::try_from(b).ok()?)?,
                }
            }
        })
    }

    /// The value when the length uses no comptime parameter.
    pub fn literal_value(&self) -> Option<i128> {
        self.eval(&|_| None)
    }
}

/// The type of a value in a kernel body.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Ty {
    /// No value (statements, functions without a result).
    Unit,
    /// A scalar of the given element type.
    Scalar(Scalar),
    /// The result of `thread_idx()`, `block_idx()`, `block_dim()`, `grid_dim()`: fields x, y, z.
    Dim3,
    /// A global-memory slice parameter: `&[T]` or `&mut [T]`.
    Slice {
        /// The element type.
        elem: Scalar,
        /// Whether it is `&mut [T]` (read-write) rather than `&[T]` (read-only).
        mutable: bool,
    },
    /// A shared or register array with one or more comptime dimensions (outermost first).
    Array {
        /// Shared memory or registers.
        space: Space,
        /// The element type.
        elem: Scalar,
        /// The length of each dimension, outermost first.
        dims: Vec<Len>,
    },
    /// The block's dynamic shared memory viewed as `[T]`, sized at launch.
    DynShared {
        /// The element type the memory is viewed as.
        elem: Scalar,
    },
    /// 16 bytes of `T` (4 × f32, 8 × f16, …), from `vload` and for `vstore`.
    Vector {
        /// The element type of the lanes.
        elem: Scalar,
    },
    /// One lane's registers of a warp-level matrix fragment of `mma.sync` m16n8k16 (see
    /// [`FragKind`]); `elem` is the 16-bit input type of A and B, `f32` for C.
    Frag {
        /// Which operand: A, B or C/D.
        kind: FragKind,
        /// The input element type: f16 or bf16 for A and B, f32 for C.
        elem: Scalar,
    },
    /// A register array of fragments, `[frag_c_zero(); N]` (one or more comptime dimensions,
    /// outermost first): the accumulators of a warp's tile, indexed like any array.
    FragArray {
        /// Which operand the fragments are.
        kind: FragKind,
        /// The input element type of A/B fragments, `f32` for C.
        elem: Scalar,
        /// The length of each dimension, outermost first.
        dims: Vec<Len>,
    },
    /// A reference to a whole register or shared array (`&[E; N]` / `&mut [E; N]`, where `E`
    /// is a scalar or a fragment): how device functions take tiles without copying them.
    Ref {
        /// The array referred to (`Ty::Array` or `Ty::FragArray`).
        to: Box<Ty>,
        /// Whether the callee may write through it.
        mutable: bool,
    },
}

/// The operands of `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32`, as one
/// lane holds them (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum FragKind {
    /// A, 16×16 row-major: four `.b32` registers, each two halves.
    A,
    /// B, 16×8 column-major: two `.b32` registers, each two halves.
    B,
    /// C/D, 16×8: four `f32` accumulators.
    C,
}

impl FragKind {
    /// Registers one lane holds.
    pub fn regs(self) -> u32 {
        match self {
            FragKind::A | FragKind::C => 4,
            FragKind::B => 2,
        }
    }

    /// The type of one register: `u32` (a packed pair of halves) for A and B, `f32` for C.
    pub fn reg_type(self) -> Scalar {
        match self {
            FragKind::A | FragKind::B => Scalar::U32,
            FragKind::C => Scalar::F32,
        }
    }

    /// The Rust spelling of the fragment type (`FragA`, `FragB`, `FragC`).
    pub fn rust_name(self) -> &'static str {
        match self {
            FragKind::A => "FragA",
            FragKind::B => "FragB",
            FragKind::C => "FragC",
        }
    }
}

impl std::fmt::Display for Len {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Len::Lit(v) => write!(f, "{v}"),
            Len::Param(name) => f.write_str(name),
            Len::Bin(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
        }
    }
}

/// Types as a Rust user would write them (in messages about specialised code, where type
/// parameters are already bound).
impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nest = |mut s: String, dims: &[Len]| {
            for d in dims.iter().rev() {
                s = format!("[{s}; {d}]");
            }
            s
        };
        match self {
            Ty::Unit => f.write_str("()"),
            Ty::Dim3 => f.write_str("Dim3"),
            Ty::Scalar(s) => f.write_str(&s.rust_name()),
            Ty::Slice { elem, mutable } => {
                let m = if *mutable { "mut " } else { "" };
                write!(f, "&{m}[{}]", elem.rust_name())
            }
            Ty::Array { space, elem, dims } => {
                let a = nest(elem.rust_name(), dims);
                match space {
                    Space::Shared => write!(f, "Shared<{a}>"),
                    Space::Local => f.write_str(&a),
                }
            }
            Ty::DynShared { elem } => write!(f, "dyn_shared [{}]", elem.rust_name()),
            Ty::Vector { elem } => write!(f, "Vec16<{}>", elem.rust_name()),
            Ty::Frag {
                kind: FragKind::C, ..
            } => f.write_str("FragC"),
            Ty::Frag { kind, elem } => write!(f, "{}<{}>", kind.rust_name(), elem.rust_name()),
            Ty::FragArray { kind, elem, dims } => {
                let frag = Ty::Frag {
                    kind: *kind,
                    elem: *elem,
                };
                f.write_str(&nest(frag.to_string(), dims))
            }
            Ty::Ref { to, mutable } => {
                let m = if *mutable { "mut " } else { "" };
                write!(f, "&{m}{to}")
            }
        }
    }
}

impl Ty {
    /// The scalar, if this is a scalar type.
    pub fn scalar(&self) -> Option<Scalar> {
        match self {
            Ty::Scalar(s) => Some(*s),
            _ => None,
        }
    }

    /// Shorthand for `Ty::Scalar`.
    pub fn s(s: Scalar) -> Ty {
        Ty::Scalar(s)
    }

    /// The element type of anything indexable (a fragment's is its register type).
    pub fn elem(&self) -> Option<Scalar> {
        match self {
            Ty::Slice { elem, .. }
            | Ty::Array { elem, .. }
            | Ty::DynShared { elem }
            | Ty::Vector { elem } => Some(*elem),
            Ty::Frag { kind, .. } => Some(kind.reg_type()),
            _ => None,
        }
    }

    /// The dimensions of a register/shared array or of an array of fragments.
    pub fn array_dims(&self) -> Option<&[Len]> {
        match self {
            Ty::Array { dims, .. } | Ty::FragArray { dims, .. } => Some(dims),
            _ => None,
        }
    }

    /// The type of `self[i]` for an array of several dimensions or of fragments: the
    /// array less its outermost dimension, or one fragment.
    pub fn array_row(&self) -> Option<Ty> {
        match self {
            Ty::Array { space, elem, dims } if dims.len() > 1 => Some(Ty::Array {
                space: *space,
                elem: *elem,
                dims: dims[1..].to_vec(),
            }),
            Ty::Array { elem, .. } => Some(Ty::s(*elem)),
            Ty::FragArray { kind, elem, dims } if dims.len() > 1 => Some(Ty::FragArray {
                kind: *kind,
                elem: *elem,
                dims: dims[1..].to_vec(),
            }),
            Ty::FragArray { kind, elem, .. } => Some(Ty::Frag {
                kind: *kind,
                elem: *elem,
            }),
            _ => None,
        }
    }

    /// The fragment kind and input element type, if this is a fragment.
    pub fn frag(&self) -> Option<(FragKind, Scalar)> {
        match self {
            Ty::Frag { kind, elem } => Some((*kind, *elem)),
            _ => None,
        }
    }

    /// Replaces type parameters through `f`.
    pub fn map_scalars(&self, f: &dyn Fn(Scalar) -> Scalar) -> Ty {
        match self {
            Ty::Unit => Ty::Unit,
            Ty::Dim3 => Ty::Dim3,
            Ty::Scalar(s) => Ty::Scalar(f(*s)),
            Ty::Slice { elem, mutable } => Ty::Slice {
                elem: f(*elem),
                mutable: *mutable,
            },
            Ty::Array { space, elem, dims } => Ty::Array {
                space: *space,
                elem: f(*elem),
                dims: dims.clone(),
            },
            Ty::DynShared { elem } => Ty::DynShared { elem: f(*elem) },
            Ty::Vector { elem } => Ty::Vector { elem: f(*elem) },
            Ty::Frag { kind, elem } => Ty::Frag {
                kind: *kind,
                elem: f(*elem),
            },
            Ty::FragArray { kind, elem, dims } => Ty::FragArray {
                kind: *kind,
                elem: f(*elem),
                dims: dims.clone(),
            },
            Ty::Ref { to, mutable } => Ty::Ref {
                to: Box::new(to.map_scalars(f)),
                mutable: *mutable,
            },
        }
    }
}

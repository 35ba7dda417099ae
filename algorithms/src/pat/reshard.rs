//! PAT's switch on the real decoder: data-parallel replicas at tensor-parallel degree `a`
//! become replicas at a higher degree `b` over the same devices (TP1×DP4 → TP4×DP1), in
//! place, without stopping the sequences they were generating.
//!
//! # Weights: slices of what every rank holds
//!
//! A rank at TP `a` holds shard `i` of every sharded tensor (query/KV heads, FFN columns,
//! K pieces of the row-sharded projections, vocabulary rows). Growing to `b = k·a`, shard `i`
//! splits into the `k` shards `i·k .. (i+1)·k` of TP `b`, so a rank can take one of them from
//! what it already has — *if* the new groups put it there: the device of old replica `j`,
//! rank `i` becomes rank `i·k + j mod k` of new replica `j / k` ([`grown_order`]; from TP 1
//! this is the devices' own order). Resharding then moves nothing between GPUs: per layer
//! the new QKV and gate/up shards are copied out of the old ones (local copies through
//! [`CommGroup::send_recv`], rank to itself) and the old ones freed at once; the O and down
//! projections are already stored as K pieces, of which a rank keeps its new share and frees
//! the rest (no copy); the LM head's rows likewise. **Memory bound**: while the weights are
//! resharded a rank holds, beyond its weights and caches before the switch, at most one new
//! tensor — the largest of one layer's new QKV shard, its new gate/up shard and the new LM
//! head shard ([`SwitchMeasure::bound_bytes`] states it in bytes, the tests assert the
//! measured peak against it). Shrinking TP would need an all-gather of the shards; it is
//! refused, as PAT only grows TP for the long tail.
//!
//! # KV: migrate or recompute, per sequence
//!
//! Under TP `b` rank `r` owns KV heads `r·H_kv/b ..`. For a **migrated** sequence, every old
//! rank that held its heads packs, layer by layer, the positions of the sequence restricted
//! to each new owner's heads ([`gather_rows`]) and sends each
//! part, one contiguous window, to that owner's new cache slot ([`CommGroup::send_recv`] over
//! the world group; the part a device keeps is a local copy). Each layer's new K (then V)
//! cache is allocated, filled and the old one freed before the next, so the KV phase holds
//! beyond the steady state one layer's new K or V cache shard, one owner's packed rows of it
//! and the row table — also within [`SwitchMeasure::bound_bytes`]. A **recomputed** sequence
//! is prefilled again (prompt and generated tokens) under the new layout
//! ([`TpDecoder::resume`]); which path each sequence takes is the caller's (the cost model's)
//! choice. Migration copies the keys and values bit for bit; a recompute rebuilds them with a
//! prefill, whose rounding of attention may differ from the decode steps' in the last bit
//! ([`SwitchMeasure::recompute_disagreed`] counts the sequences where that changed the
//! recomputing prefill's token).
//!
//! Groups (the world group over every device and the new layout's groups) are made once by
//! the caller and reused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::decoder::{elems, DecoderError, Dims, Rank, Reduction, Sequence, TpDecoder};
use super::kernels::gather_rows;
use crate::verify::Real;
use kiln::comm::{CommGroup, Transfer};
use kiln::{Device, DeviceBuffer};

/// How one unfinished sequence's KV cache crosses a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPath {
    /// Its keys and values are sent to the ranks that own their heads under the new layout.
    Migrate,
    /// Its cache is rebuilt by a prefill of its prompt and generated tokens.
    Recompute,
}

/// Options of [`grow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchOptions {
    /// Fill every new weight buffer with NaN and every new cache with a large finite value
    /// before it is written, so a missed copy shows (in checks; it costs an upload of each
    /// buffer, which a timed run leaves out).
    pub poison: bool,
}

/// What a switch did and what it cost, measured (wall times end with every device
/// synchronised).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwitchMeasure {
    /// Weight resharding, ms.
    pub weights_ms: f64,
    /// KV migration (and the re-layout of every cache), ms.
    pub migrate_ms: f64,
    /// Prefills of the recomputed sequences, ms.
    pub recompute_ms: f64,
    /// Sequences whose KV was migrated.
    pub migrated: usize,
    /// Sequences whose KV was recomputed.
    pub recomputed: usize,
    /// Recomputed sequences whose prefill chose another token than the one they had
    /// generated (prefill and decode round attention differently).
    pub recompute_disagreed: usize,
    /// Bytes of keys and values sent between different devices.
    pub kv_bytes_to_peers: u64,
    /// Bytes of weights moved between different devices (0 when growing TP).
    pub weight_bytes_to_peers: u64,
    /// The most bytes a rank held beyond its weights and caches before the switch (weights,
    /// caches, entry sizes and the switch's own staging; a prefill's activations not
    /// counted), over all ranks.
    pub peak_extra_bytes: u64,
    /// The bound the module documentation states, in bytes, for the same rank sizes.
    pub bound_bytes: u64,
}

impl SwitchMeasure {
    /// The whole pause, ms.
    pub fn total_ms(&self) -> f64 {
        self.weights_ms + self.migrate_ms + self.recompute_ms
    }
}

/// For growing TP `from` to `to` over `n` devices, listed in the order of
/// `replica_groups(devices, from)`: each new replica's devices (indices into that list) in
/// its rank order, chosen so every rank's new shards lie inside its old ones (see the module
/// documentation).
pub fn grown_order(n: usize, from: usize, to: usize) -> Result<Vec<Vec<usize>>, DecoderError> {
    if from == 0 || to <= from || !to.is_multiple_of(from) || n == 0 || !n.is_multiple_of(to) {
        return Err(DecoderError::Config(format!(
            "a switch from TP {from} to TP {to} over {n} devices: TP must grow by a whole factor that divides the device count (shrinking TP is not built)"
        )));
    }
    let k = to / from;
    Ok((0..n / to)
        .map(|big| (0..to).map(|r| (big * k + r % k) * from + r / k).collect())
        .collect())
}

/// The groups of the layout TP `to` grown from TP `from` ([`grown_order`]) over `devices`
/// (in the order of `replica_groups(devices, from)`), made once, to pass to [`grow`].
pub fn grown_groups(
    devices: &[Device],
    from: usize,
    to: usize,
) -> Result<Vec<Arc<CommGroup>>, DecoderError> {
    grown_order(devices.len(), from, to)?
        .into_iter()
        .map(|order| {
            let group: Vec<Device> = order.iter().map(|&i| devices[i].clone()).collect();
            Ok(Arc::new(CommGroup::new(&group)?))
        })
        .collect()
}

/// Bytes of weights, caches and entry sizes a rank holds.
fn held_bytes<T: Real>(rank: &Rank<T>) -> u64 {
    let t = |b: &DeviceBuffer<T>| (b.len() * std::mem::size_of::<T>()) as u64;
    let layers: u64 = rank
        .layers
        .iter()
        .map(|l| {
            t(&l.attn_norm)
                + t(&l.wqkv)
                + l.wo.iter().map(t).sum::<u64>()
                + t(&l.mlp_norm)
                + t(&l.wgu)
                + l.wdown.iter().map(t).sum::<u64>()
                + t(&l.k_cache)
                + t(&l.v_cache)
        })
        .sum();
    t(&rank.embed) + t(&rank.final_norm) + t(&rank.lm_head) + layers + 4 * rank.counts.len() as u64
}

impl<T: Real> TpDecoder<T> {
    /// Bytes of weights, KV caches and entry sizes each rank holds (activations not counted).
    pub fn held_bytes(&self) -> Vec<u64> {
        self.ranks.iter().map(held_bytes).collect()
    }
}

/// Live bytes per world rank during a switch, and their peak.
struct Ledger {
    start: Vec<u64>,
    live: Vec<u64>,
    peak: Vec<u64>,
}

impl Ledger {
    fn new(start: Vec<u64>) -> Ledger {
        Ledger {
            live: start.clone(),
            peak: start.clone(),
            start,
        }
    }

    fn alloc(&mut self, w: usize, bytes: u64) {
        self.live[w] += bytes;
        self.peak[w] = self.peak[w].max(self.live[w]);
    }

    fn free(&mut self, w: usize, bytes: u64) {
        self.live[w] -= bytes;
    }

    fn peak_extra(&self) -> u64 {
        self.peak
            .iter()
            .zip(&self.start)
            .map(|(p, s)| p - s)
            .max()
            .unwrap_or(0)
    }
}

fn bytes_of<T>(n: usize) -> u64 {
    (n * std::mem::size_of::<T>()) as u64
}

/// A new buffer of `n` values on `dev`: zeros, or `poison` everywhere.
fn fresh<T: Real>(
    dev: &Device,
    n: usize,
    poison: Option<T>,
) -> Result<DeviceBuffer<T>, DecoderError> {
    Ok(match poison {
        Some(p) => dev.upload(&vec![p; n.max(1)])?,
        None => dev.zeros(n.max(1))?,
    })
}

/// Every world rank's new tensor of `len` values, filled from its old one `old[w]` by local
/// copies of the windows `windows[w]` (`(offset, count)`, placed back to back), the old one's
/// bytes handed back to the ledger by the caller when it drops it.
fn slice_local<T: Real>(
    world: &CommGroup,
    old: &[&DeviceBuffer<T>],
    windows: &[Vec<(usize, usize)>],
    len: usize,
    poison: bool,
    ledger: &mut Ledger,
) -> Result<Vec<DeviceBuffer<T>>, DecoderError> {
    let mut out = Vec::with_capacity(old.len());
    let mut transfers = Vec::new();
    for (w, wins) in windows.iter().enumerate() {
        out.push(fresh(world.device(w), len, poison.then_some(T::NAN))?);
        ledger.alloc(w, bytes_of::<T>(len));
        let mut at = 0;
        for &(offset, count) in wins {
            transfers.push(Transfer {
                from: w,
                to: w,
                send_offset: offset,
                recv_offset: at,
                count,
            });
            at += count;
        }
        if at != len {
            return Err(DecoderError::Config(format!(
                "rank {w}: the new shard's windows hold {at} values, the shard {len}"
            )));
        }
    }
    let mut recv: Vec<&mut DeviceBuffer<T>> = out.iter_mut().collect();
    world.send_recv(old, &mut recv, &transfers)?;
    Ok(out)
}

/// Where a world rank goes: new replica, new rank, and `g`, which of the `k` new shards
/// inside its old shard `i` it keeps.
#[derive(Clone, Copy, Debug)]
struct Place {
    replica: usize,
    rank: usize,
    g: usize,
}

/// Reshards every rank's weights in place (see the module documentation).
fn reshard_weights<T: Real>(
    world: &CommGroup,
    ranks: &mut [Rank<T>],
    places: &[Place],
    (da, db): (&Dims, &Dims),
    poison: bool,
    ledger: &mut Ledger,
) -> Result<(), DecoderError> {
    let (h, d) = (da.hidden, da.dim);
    let (qa, kva, fa) = (da.heads * d, da.kv_heads * d, da.ffn);
    let (qb, kvb, fb) = (db.heads * d, db.kv_heads * d, db.ffn);
    let size = bytes_of::<T>(1);
    for l in 0..ranks[0].layers.len() {
        let windows: Vec<Vec<(usize, usize)>> = places
            .iter()
            .map(|p| {
                let g = p.g;
                vec![
                    (g * qb * h, qb * h),
                    ((qa + g * kvb) * h, kvb * h),
                    ((qa + kva + g * kvb) * h, kvb * h),
                ]
            })
            .collect();
        let old: Vec<&DeviceBuffer<T>> = ranks.iter().map(|r| &r.layers[l].wqkv).collect();
        let new = slice_local(world, &old, &windows, (qb + 2 * kvb) * h, poison, ledger)?;
        for (w, (rank, buf)) in ranks.iter_mut().zip(new).enumerate() {
            let old = std::mem::replace(&mut rank.layers[l].wqkv, buf);
            ledger.free(w, size * old.len() as u64);
        }
        let windows: Vec<Vec<(usize, usize)>> = places
            .iter()
            .map(|p| vec![(p.g * fb * h, fb * h), ((fa + p.g * fb) * h, fb * h)])
            .collect();
        let old: Vec<&DeviceBuffer<T>> = ranks.iter().map(|r| &r.layers[l].wgu).collect();
        let new = slice_local(world, &old, &windows, 2 * fb * h, poison, ledger)?;
        for (w, (rank, buf)) in ranks.iter_mut().zip(new).enumerate() {
            let old = std::mem::replace(&mut rank.layers[l].wgu, buf);
            ledger.free(w, size * old.len() as u64);
        }
        // the row-sharded projections are stored as K pieces: keep the new share, free the rest
        for (w, (rank, p)) in ranks.iter_mut().zip(places).enumerate() {
            let layer = &mut rank.layers[l];
            for pieces in [&mut layer.wo, &mut layer.wdown] {
                let keep: Vec<DeviceBuffer<T>> = pieces
                    .drain(p.g * db.pieces..(p.g + 1) * db.pieces)
                    .collect();
                let dropped: u64 = pieces.iter().map(|b| size * b.len() as u64).sum();
                *pieces = keep;
                ledger.free(w, dropped);
            }
        }
    }
    let windows: Vec<Vec<(usize, usize)>> = places
        .iter()
        .map(|p| vec![(p.g * db.vocab * h, db.vocab * h)])
        .collect();
    let old: Vec<&DeviceBuffer<T>> = ranks.iter().map(|r| &r.lm_head).collect();
    let new = slice_local(world, &old, &windows, db.vocab * h, poison, ledger)?;
    for (w, (rank, buf)) in ranks.iter_mut().zip(new).enumerate() {
        let old = std::mem::replace(&mut rank.lm_head, buf);
        ledger.free(w, size * old.len() as u64);
    }
    Ok(())
}

/// A migrating sequence: its old replica and slot, its new slot.
#[derive(Clone, Copy, Debug)]
struct Move {
    replica: usize,
    old_slot: usize,
    new_slot: usize,
    len: usize,
}

/// Re-lays every layer's caches for TP `b` (new slots), moving the migrating sequences'
/// keys and values to their new owners (see the module documentation).
#[allow(clippy::too_many_arguments)]
fn migrate_kv<T: Real>(
    world: &CommGroup,
    ranks: &mut [Rank<T>],
    places: &[Place],
    (a, k): (usize, usize),
    (da, db): (&Dims, &Dims),
    moves: &[Move],
    poison: bool,
    ledger: &mut Ledger,
) -> Result<(), DecoderError> {
    let n = ranks.len();
    let (d, cap) = (da.dim, da.cap);
    let (wa, wb) = (da.kv_heads * d, db.kv_heads * d);
    let size = bytes_of::<T>(1);
    // per world rank (old replica w / a): the cache entries of its migrating sequences, packed
    let mut starts = vec![0usize; moves.len()];
    let mut tables: Vec<DeviceBuffer<u32>> = Vec::with_capacity(n);
    let mut rows_of = vec![0usize; n];
    for (w, rank) in ranks.iter().enumerate() {
        let mut table = Vec::new();
        for (m, mv) in moves.iter().enumerate() {
            if mv.replica == w / a {
                starts[m] = table.len();
                table.extend((0..mv.len).map(|p| (mv.old_slot * cap + p) as u32));
            }
        }
        rows_of[w] = table.len();
        ledger.alloc(w, 4 * table.len().max(1) as u64);
        tables.push(
            rank.device
                .upload(&if table.is_empty() { vec![0] } else { table })?,
        );
    }
    let new_len = db.slots * cap * wb;
    let poison_value = poison.then(|| T::from_f32(1e3));
    for l in 0..ranks[0].layers.len() {
        for value in [false, true] {
            let mut new: Vec<DeviceBuffer<T>> = Vec::with_capacity(n);
            for (w, rank) in ranks.iter().enumerate() {
                new.push(fresh(&rank.device, new_len, poison_value)?);
                ledger.alloc(w, size * new_len as u64);
            }
            for g in 0..k {
                let mut packed = Vec::with_capacity(n);
                for (w, rank) in ranks.iter().enumerate() {
                    let rows = rows_of[w];
                    let mut buf = fresh(&rank.device, rows * wb, None)?;
                    ledger.alloc(w, size * buf.len() as u64);
                    if rows > 0 {
                        let layer = &rank.layers[l];
                        let src = if value {
                            &layer.v_cache
                        } else {
                            &layer.k_cache
                        };
                        gather_rows::launch(
                            &rank.kernels.gather,
                            &elems(rows * wb),
                            src,
                            &mut buf,
                            &tables[w],
                            rows as u32,
                            wa as u32,
                            (g * wb) as u32,
                            wb as u32,
                        )?;
                    }
                    packed.push(buf);
                }
                // old replica j's rank i sends head group g to new rank i·k + g of replica j / k
                let mut transfers = Vec::new();
                for (m, mv) in moves.iter().enumerate() {
                    for i in 0..a {
                        let from = mv.replica * a + i;
                        let to = places
                            .iter()
                            .position(|p| p.replica == mv.replica / k && p.rank == i * k + g)
                            .expect("every new rank has a device");
                        transfers.push(Transfer {
                            from,
                            to,
                            send_offset: starts[m] * wb,
                            recv_offset: mv.new_slot * cap * wb,
                            count: mv.len * wb,
                        });
                    }
                }
                let send: Vec<&DeviceBuffer<T>> = packed.iter().collect();
                let mut recv: Vec<&mut DeviceBuffer<T>> = new.iter_mut().collect();
                world.send_recv(&send, &mut recv, &transfers)?;
                for (w, buf) in packed.into_iter().enumerate() {
                    ledger.free(w, size * buf.len() as u64);
                }
            }
            for (w, (rank, buf)) in ranks.iter_mut().zip(new).enumerate() {
                let layer = &mut rank.layers[l];
                let slot = if value {
                    &mut layer.v_cache
                } else {
                    &mut layer.k_cache
                };
                let old = std::mem::replace(slot, buf);
                ledger.free(w, size * old.len() as u64);
            }
        }
    }
    for (w, t) in tables.into_iter().enumerate() {
        ledger.free(w, 4 * t.len() as u64);
    }
    // entry sizes: 1 for every position a migrated sequence holds, 0 elsewhere
    for (w, (rank, p)) in ranks.iter_mut().zip(places).enumerate() {
        let mut counts = vec![0.0f32; db.slots * cap * db.kv_heads];
        for mv in moves.iter().filter(|m| m.replica / k == p.replica) {
            let at = mv.new_slot * cap * db.kv_heads;
            counts[at..at + mv.len * db.kv_heads].fill(1.0);
        }
        ledger.alloc(w, 4 * counts.len() as u64);
        let old = std::mem::replace(&mut rank.counts, rank.device.upload(&counts)?);
        ledger.free(w, 4 * old.len() as u64);
    }
    Ok(())
}

/// Switches `replicas` (every data-parallel replica, in the order of `replica_groups`, all
/// at one TP degree with the fixed reduction tree, the same shape and options) to the
/// layout of `groups` (from [`grown_groups`]: a higher TP over the same devices), in place:
/// weights resharded, then each unfinished sequence's KV migrated or recomputed as `path`
/// says. `world` is a group over every device in the replicas' order (for the KV
/// transfers); `prompts` holds every unfinished sequence's prompt, by id (a recompute
/// prefills it again). The new replicas carry the old ones' retired sequences and their
/// slots added up (new replica `J` merges old replicas `J·k .. (J+1)·k`). Everything is
/// checked before anything moves; an error after that (a failed launch or transfer) loses
/// the replicas, as the switch works in place.
pub fn grow<T: Real>(
    replicas: Vec<TpDecoder<T>>,
    world: &CommGroup,
    groups: &[Arc<CommGroup>],
    path: &dyn Fn(&Sequence) -> KvPath,
    prompts: &BTreeMap<usize, Vec<u32>>,
    options: SwitchOptions,
) -> Result<(Vec<TpDecoder<T>>, SwitchMeasure), DecoderError> {
    let first = replicas
        .first()
        .ok_or_else(|| DecoderError::Config("no replicas to switch".into()))?;
    let (a, config, old_options, chunk) = (first.tp(), first.config, first.options, first.chunk);
    if old_options.reduction != Reduction::FixedTree {
        return Err(DecoderError::Config(
            "a switch needs the fixed reduction tree: the K pieces it keeps are that scheme's"
                .into(),
        ));
    }
    if let Some(bad) = replicas
        .iter()
        .position(|r| r.tp() != a || r.config != config || r.options != old_options)
    {
        return Err(DecoderError::Config(format!(
            "replica {bad} differs from replica 0 in TP, shape or options"
        )));
    }
    let n = replicas.len() * a;
    let b = groups.first().map_or(0, |g| g.ranks());
    let order = grown_order(n, a, b)?;
    if world.ranks() != n || groups.len() != order.len() || groups.iter().any(|g| g.ranks() != b) {
        return Err(DecoderError::Config(format!(
            "{} replicas of TP {a} are {n} devices: the world group has {} ranks and the new layout {} groups of {b}",
            replicas.len(),
            world.ranks(),
            groups.len()
        )));
    }
    config.validate(b as u32, Reduction::FixedTree)?;
    if let Some(s) = replicas
        .iter()
        .flat_map(|r| &r.active)
        .find(|s| path(s) == KvPath::Recompute && !prompts.contains_key(&s.id))
    {
        return Err(DecoderError::Config(format!(
            "no prompt for sequence {} to recompute",
            s.id
        )));
    }
    let k = b / a;
    let new_options = super::decoder::DecoderOptions {
        slots: old_options.slots * k as u32,
        ..old_options
    };
    let da = first.dims;
    let db = Dims::new(&config, b, &new_options);
    let mut places = vec![
        Place {
            replica: 0,
            rank: 0,
            g: 0
        };
        n
    ];
    for (replica, devices) in order.iter().enumerate() {
        for (rank, &w) in devices.iter().enumerate() {
            places[w] = Place {
                replica,
                rank,
                g: rank % k,
            };
        }
    }
    // take the replicas apart: ranks by world index, sequences by old replica
    let mut ranks = Vec::with_capacity(n);
    let mut sequences = Vec::with_capacity(replicas.len());
    let mut retired = vec![Vec::new(); order.len()];
    for (j, rep) in replicas.into_iter().enumerate() {
        retired[j / k].extend(rep.retired);
        sequences.push(rep.active);
        for mut rank in rep.ranks {
            rank.step_work = None;
            ranks.push(rank);
        }
    }
    let mut ledger = Ledger::new(ranks.iter().map(held_bytes).collect());
    let mut measure = SwitchMeasure {
        bound_bytes: switch_bound::<T>(&da, &db, &sequences, path),
        ..SwitchMeasure::default()
    };

    let before = world.stats();
    let t = Instant::now();
    reshard_weights(
        world,
        &mut ranks,
        &places,
        (&da, &db),
        options.poison,
        &mut ledger,
    )?;
    world.synchronize()?;
    measure.weights_ms = 1e3 * t.elapsed().as_secs_f64();
    measure.weight_bytes_to_peers = world.stats().since(&before).p2p_bytes_to_peers;

    // new slots: per new replica, its old replicas' migrating sequences in order, then the
    // recomputed ones (prefilled after)
    let mut moves = Vec::new();
    let mut kept: Vec<Vec<Sequence>> = vec![Vec::new(); order.len()];
    let mut redo: Vec<Vec<Sequence>> = vec![Vec::new(); order.len()];
    for (j, seqs) in sequences.into_iter().enumerate() {
        for (old_slot, s) in seqs.into_iter().enumerate() {
            match path(&s) {
                KvPath::Migrate => {
                    moves.push(Move {
                        replica: j,
                        old_slot,
                        new_slot: kept[j / k].len(),
                        len: s.len as usize,
                    });
                    kept[j / k].push(s);
                }
                KvPath::Recompute => redo[j / k].push(s),
            }
        }
    }
    let before = world.stats();
    let t = Instant::now();
    migrate_kv(
        world,
        &mut ranks,
        &places,
        (a, k),
        (&da, &db),
        &moves,
        options.poison,
        &mut ledger,
    )?;
    world.synchronize()?;
    measure.migrate_ms = 1e3 * t.elapsed().as_secs_f64();
    measure.kv_bytes_to_peers = world.stats().since(&before).p2p_bytes_to_peers;
    measure.migrated = moves.len();
    measure.peak_extra_bytes = ledger.peak_extra();
    if let Some(w) = (0..n).find(|&w| ledger.live[w] != held_bytes(&ranks[w])) {
        return Err(DecoderError::Config(format!(
            "rank {w}: the switch's ledger says {} bytes, the rank holds {}",
            ledger.live[w],
            held_bytes(&ranks[w])
        )));
    }

    // the new replicas, then the recomputes
    let mut slots: Vec<Vec<Option<Rank<T>>>> = (0..order.len())
        .map(|_| (0..b).map(|_| None).collect())
        .collect();
    for (rank, p) in ranks.into_iter().zip(&places) {
        slots[p.replica][p.rank] = Some(rank);
    }
    let mut out = Vec::with_capacity(order.len());
    for ((((group, ranks), active), retired), redo) in
        groups.iter().zip(slots).zip(kept).zip(retired).zip(&redo)
    {
        let ranks: Vec<Rank<T>> = ranks.into_iter().flatten().collect();
        if ranks.len() != b {
            return Err(DecoderError::Config("a new rank has no device".into()));
        }
        if active.len() + redo.len() > db.slots {
            return Err(DecoderError::Config(format!(
                "{} sequences for {} slots",
                active.len() + redo.len(),
                db.slots
            )));
        }
        out.push(TpDecoder {
            group: group.clone(),
            config,
            options: new_options,
            dims: db,
            ranks,
            active,
            retired,
            prompt_logits: None,
            chunk,
        });
    }
    let t = Instant::now();
    for (dec, redo) in out.iter_mut().zip(redo) {
        for seq in redo {
            let mut context = prompts[&seq.id].clone();
            context.extend(&seq.generated[..seq.generated.len() - 1]);
            let last = *seq
                .generated
                .last()
                .expect("an active sequence has a token");
            let chose = dec.resume(seq, &context)?;
            measure.recomputed += 1;
            measure.recompute_disagreed += (chose != last) as usize;
        }
    }
    world.synchronize()?;
    measure.recompute_ms = 1e3 * t.elapsed().as_secs_f64();
    Ok((out, measure))
}

/// [`SwitchMeasure::bound_bytes`]: the larger of one new weight tensor (a layer's QKV or
/// gate/up shard, or the LM head's) and the KV phase's one layer's new K cache shard, one
/// owner's packed rows of it, the row table and, at the end, the new entry sizes.
fn switch_bound<T: Real>(
    da: &Dims,
    db: &Dims,
    sequences: &[Vec<Sequence>],
    path: &dyn Fn(&Sequence) -> KvPath,
) -> u64 {
    let h = db.hidden;
    let weights = [
        (db.heads + 2 * db.kv_heads) * db.dim * h,
        2 * db.ffn * h,
        db.vocab * h,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let rows = sequences
        .iter()
        .map(|seqs| {
            seqs.iter()
                .filter(|s| path(s) == KvPath::Migrate)
                .map(|s| s.len as usize)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let cache = db.slots * da.cap * db.kv_heads * db.dim;
    let kv = bytes_of::<T>(cache + rows * db.kv_heads * db.dim) + 4 * rows as u64;
    let counts = 4 * (db.slots * da.cap * db.kv_heads) as u64 + 4 * rows as u64;
    bytes_of::<T>(weights).max(kv).max(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pat::decoder::{replica_groups, DecoderConfig, DecoderOptions, DecoderWeights};
    use half::bf16;

    fn options(slots: u32, reduction: Reduction) -> DecoderOptions {
        DecoderOptions {
            slots,
            max_seq: 24,
            reduction,
            record_logits: true,
            eos: None,
        }
    }

    /// Sequences `(id, prompt, max_new)`: two per old replica of four devices.
    fn requests(vocab: u32) -> Vec<(usize, Vec<u32>, usize)> {
        (0..8)
            .map(|i| {
                let prompt = (0..3 + i % 4)
                    .map(|t| (7 * i + 13 * t + 1) as u32 % vocab)
                    .collect();
                (i, prompt, 8)
            })
            .collect()
    }

    fn bits(logits: Option<Vec<Vec<f32>>>) -> Vec<Vec<u32>> {
        logits
            .unwrap_or_default()
            .iter()
            .map(|l| l.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    /// TP `from` replicas over four emulated devices, each given its share of [`requests`]
    /// and stepped twice, grown to TP `to` with every sequence taking `path`; against one
    /// decoder per new replica that ran at TP `to` from the start with the same sequences
    /// in the same slots: the next two steps' logits bit for bit, the bytes held equal, the
    /// peak extra memory within the stated bound.
    fn grown_equals_static(from: usize, to: usize, path: KvPath) {
        let config = DecoderConfig::small();
        let weights = DecoderWeights::<bf16>::random(&config, 31);
        let devices: Vec<Device> = (0..4).map(|_| Device::emulator()).collect();
        let world = CommGroup::new(&devices).unwrap();
        let reqs = requests(config.vocab);
        let dp = 4 / from;
        let mut olds: Vec<TpDecoder<bf16>> = replica_groups(&devices, from)
            .unwrap()
            .into_iter()
            .map(|g| {
                TpDecoder::new(g, &weights, options(8 / dp as u32, Reduction::FixedTree)).unwrap()
            })
            .collect();
        for (i, (id, prompt, new)) in reqs.iter().enumerate() {
            olds[i % dp].add(*id, prompt, *new).unwrap();
        }
        for _ in 0..2 {
            for o in &mut olds {
                o.step().unwrap();
            }
        }
        // the static decoders: new replica J holds old replicas J·k .. in order
        let k = to / from;
        let groups = grown_groups(&devices, from, to).unwrap();
        let mut fixed: Vec<TpDecoder<bf16>> = groups
            .iter()
            .map(|g| {
                TpDecoder::new(
                    g.clone(),
                    &weights,
                    options(8 * k as u32 / dp as u32, Reduction::FixedTree),
                )
                .unwrap()
            })
            .collect();
        for j in 0..dp {
            for (i, (id, prompt, new)) in reqs.iter().enumerate() {
                if i % dp == j {
                    fixed[j / k].add(*id, prompt, *new).unwrap();
                }
            }
        }
        for _ in 0..2 {
            for f in &mut fixed {
                f.step().unwrap();
            }
        }
        let prompts: BTreeMap<usize, Vec<u32>> =
            reqs.iter().map(|(id, p, _)| (*id, p.clone())).collect();
        let (mut grown, m) = grow(
            olds,
            &world,
            &groups,
            &|_| path,
            &prompts,
            SwitchOptions { poison: true },
        )
        .unwrap();
        println!("TP {from} → {to}, {path:?}: {m:?}");
        assert_eq!(m.weight_bytes_to_peers, 0, "growing TP moves no weights");
        assert!(m.peak_extra_bytes <= m.bound_bytes, "{m:?}");
        assert!(m.peak_extra_bytes > 0);
        match path {
            KvPath::Migrate => {
                assert_eq!((m.migrated, m.recomputed), (8, 0));
                assert!(m.kv_bytes_to_peers > 0);
            }
            KvPath::Recompute => {
                assert_eq!((m.migrated, m.recomputed), (0, 8));
                assert_eq!(m.kv_bytes_to_peers, 0);
            }
        }
        for (g, f) in grown.iter_mut().zip(&mut fixed) {
            assert_eq!(g.tp(), to);
            assert_eq!(g.active(), f.active());
            assert_eq!(g.held_bytes(), f.held_bytes());
            for _ in 0..2 {
                let (a, b) = (g.step().unwrap(), f.step().unwrap());
                assert_eq!(a.tokens, b.tokens);
                if path == KvPath::Migrate {
                    assert_eq!(bits(a.logits), bits(b.logits), "logits after the switch");
                }
            }
        }
    }

    #[test]
    fn tp1_to_tp4_by_migration_decodes_bit_equal() {
        grown_equals_static(1, 4, KvPath::Migrate);
    }

    #[test]
    fn tp2_to_tp4_by_migration_decodes_bit_equal() {
        grown_equals_static(2, 4, KvPath::Migrate);
    }

    #[test]
    fn tp1_to_tp2_by_recompute_decodes_alike() {
        grown_equals_static(1, 2, KvPath::Recompute);
    }

    #[test]
    fn bad_switches_are_refused() {
        for (n, from, to) in [
            (4, 4, 2),
            (4, 1, 3),
            (4, 2, 2),
            (3, 1, 2),
            (4, 0, 4),
            (6, 2, 4),
        ] {
            match grown_order(n, from, to) {
                Err(DecoderError::Config(m)) => assert!(m.contains("TP must grow"), "{m}"),
                other => panic!("{n} devices, TP {from} → {to}: {other:?}"),
            }
        }
        assert_eq!(grown_order(4, 1, 4).unwrap(), vec![vec![0, 1, 2, 3]]);
        assert_eq!(grown_order(4, 2, 4).unwrap(), vec![vec![0, 2, 1, 3]]);
        assert_eq!(grown_order(4, 1, 2).unwrap(), vec![vec![0, 1], vec![2, 3]]);
        let config = DecoderConfig::small();
        let weights = DecoderWeights::<bf16>::random(&config, 3);
        let devices: Vec<Device> = (0..4).map(|_| Device::emulator()).collect();
        let world = CommGroup::new(&devices).unwrap();
        let groups = grown_groups(&devices, 1, 4).unwrap();
        let make = |reduction| -> Vec<TpDecoder<bf16>> {
            replica_groups(&devices, 1)
                .unwrap()
                .into_iter()
                .map(|g| TpDecoder::new(g, &weights, options(1, reduction)).unwrap())
                .collect()
        };
        let none = BTreeMap::new();
        let refused = |r: Result<(Vec<TpDecoder<bf16>>, SwitchMeasure), DecoderError>,
                       what: &str| match r {
            Err(DecoderError::Config(m)) => assert!(m.contains(what), "{what}: {m}"),
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("not refused: {what}"),
        };
        let opts = SwitchOptions { poison: false };
        let migrate = |_: &Sequence| KvPath::Migrate;
        refused(
            grow(
                make(Reduction::AllReduce),
                &world,
                &groups,
                &migrate,
                &none,
                opts,
            ),
            "fixed reduction tree",
        );
        let mut three = make(Reduction::FixedTree);
        three.pop();
        refused(
            grow(three, &world, &groups, &migrate, &none, opts),
            "TP must grow",
        );
        refused(
            grow(Vec::new(), &world, &groups, &migrate, &none, opts),
            "no replicas",
        );
        // a recompute needs the prompt
        let mut reps = make(Reduction::FixedTree);
        reps[0].add(5, &[1, 2, 3], 4).unwrap();
        refused(
            grow(reps, &world, &groups, &|_| KvPath::Recompute, &none, opts),
            "no prompt",
        );
    }
}

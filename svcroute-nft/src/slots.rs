//! Stable endpoint slots.
//!
//! An endpoint map (`svc-H-ep`, `svl-H-ep`) maps the slot `numgen random mod N` picks to an
//! endpoint (`addr . port`, or `goto sep-E` with session affinity), so its slots must be
//! exactly `0..N-1`. Render numbers slots in endpoint order, which is what a full sync
//! writes. Renumbering from slot 0 on every change would rewrite most of the map when one
//! endpoint goes, so an incremental sync instead [`keep`]s the slots already programmed:
//!
//! - an endpoint that stays keeps its slot;
//! - the slot of an endpoint that goes is taken by a new endpoint if there is one, else by
//!   the endpoint of the last slot (so the slots stay dense);
//! - the remaining new endpoints take new slots at the end.
//!
//! Taking one endpoint out of fifty then writes three elements (delete the emptied slot and
//! the last one, add the moved endpoint back at the emptied slot), adding one writes one, and
//! replacing one (a rolling update) writes two. Every slot is picked with probability 1/N
//! whatever the numbering, so routing does not depend on it.

use std::collections::{BTreeMap, HashMap};

use crate::ruleset::{ElemKey, Element, KeyType, Set, SetDecl, Value};

/// Whether sets declared `decl` are endpoint maps keyed by a `numgen` slot.
pub fn is_slot_map(decl: &SetDecl) -> bool {
    decl.key == [KeyType::Slot]
}

/// Renumbers the slots of `next` (a newly rendered endpoint map) so that the elements of
/// `previous` (the same map as programmed) keep theirs, as the module docs describe. Does
/// nothing unless both are slot maps.
pub fn keep(previous: &Set, next: &mut Set) {
    if !is_slot_map(&previous.decl) || !is_slot_map(&next.decl) {
        return;
    }
    let old: Vec<&Element> = previous.elements.values().collect();
    let wanted: Vec<Element> = std::mem::take(&mut next.elements).into_values().collect();
    next.elements = numbered(assign(&old, &wanted));
}

/// The elements in slot order for a map that held `old` (in slot order) and must now hold
/// `wanted` (in render order): see the module docs.
fn assign<'a>(old: &[&'a Element], wanted: &'a [Element]) -> Vec<&'a Element> {
    let mut unplaced: HashMap<&Element, usize> = HashMap::new();
    for element in wanted {
        *unplaced.entry(element).or_default() += 1;
    }
    let mut slots: Vec<Option<&Element>> = old
        .iter()
        .map(|element| take(&mut unplaced, element).then_some(*element))
        .collect();
    let mut new = wanted.iter().filter(|e| take(&mut unplaced, e));
    for hole in slots.iter_mut().filter(|slot| slot.is_none()) {
        *hole = new.next();
    }
    close_holes(&mut slots);
    slots.into_iter().flatten().chain(new).collect()
}

/// Takes one `element` out of `unplaced`; whether there was one.
fn take(unplaced: &mut HashMap<&Element, usize>, element: &Element) -> bool {
    match unplaced.get_mut(element) {
        Some(count) if *count > 0 => {
            *count -= 1;
            true
        }
        _ => false,
    }
}

/// Fills every empty slot with the entry of the last slot, highest empty slot first, so only
/// entries that stay are moved; the slots left are dense.
fn close_holes<T>(slots: &mut Vec<Option<T>>) {
    for i in (0..slots.len()).rev() {
        if slots[i].is_none() {
            slots.swap_remove(i);
        }
    }
}

/// `elements` keyed by their slot: 0, 1, 2...
fn numbered(elements: Vec<&Element>) -> BTreeMap<ElemKey, Element> {
    (0u32..)
        .zip(elements)
        .map(|(slot, element)| (Value::Int(slot).into(), element.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{ElemValue, SetKind};

    fn endpoint(i: u8) -> Element {
        Element {
            value: Some(ElemValue::Endpoint(
                format!("10.244.0.{i}:80").parse().unwrap(),
            )),
            comment: None,
        }
    }

    fn map(endpoints: &[u8]) -> Set {
        let elements: Vec<Element> = endpoints.iter().map(|i| endpoint(*i)).collect();
        Set {
            decl: SetDecl {
                kind: SetKind::EndpointMap,
                key: vec![KeyType::Slot],
                interval: false,
                timeout: None,
                size: None,
                protocol: None,
                comment: None,
            },
            elements: numbered(elements.iter().collect()),
        }
    }

    /// The endpoints of `set`, in slot order (checking the slots are 0..N-1).
    fn slots(set: &Set) -> Vec<u8> {
        set.elements
            .iter()
            .enumerate()
            .map(|(i, (key, element))| {
                assert_eq!(key, &ElemKey::from(Value::Int(i as u32)), "dense slots");
                match element.value {
                    Some(ElemValue::Endpoint(e)) => match e.ip() {
                        std::net::IpAddr::V4(ip) => ip.octets()[3],
                        std::net::IpAddr::V6(_) => unreachable!(),
                    },
                    _ => unreachable!(),
                }
            })
            .collect()
    }

    fn kept(previous: &[u8], next: &[u8]) -> Vec<u8> {
        let mut set = map(next);
        keep(&map(previous), &mut set);
        slots(&set)
    }

    #[test]
    fn a_hole_takes_the_last_slot() {
        assert_eq!(kept(&[1, 2, 3, 4, 5], &[1, 3, 4, 5]), [1, 5, 3, 4]);
    }

    #[test]
    fn the_last_slot_just_goes() {
        assert_eq!(kept(&[1, 2, 3], &[1, 2]), [1, 2]);
    }

    #[test]
    fn new_endpoints_fill_holes_then_the_tail() {
        assert_eq!(kept(&[1, 2, 3], &[1, 3, 7]), [1, 7, 3]);
        assert_eq!(kept(&[1, 2, 3], &[0, 1, 2, 3, 4]), [1, 2, 3, 0, 4]);
    }

    #[test]
    fn several_holes_move_only_survivors() {
        // 2 and 5 go: slot 4 (5) is emptied first and dropped, then slot 1 takes 4.
        assert_eq!(kept(&[1, 2, 3, 4, 5], &[1, 3, 4]), [1, 4, 3]);
        assert_eq!(kept(&[1, 2, 3, 4, 5, 6], &[3, 5]), [3, 5]);
        assert_eq!(kept(&[1, 2], &[]), Vec::<u8>::new());
        assert_eq!(kept(&[], &[2, 1]), [2, 1]);
    }

    #[test]
    fn other_sets_are_left_alone() {
        let mut set = map(&[1, 2]);
        set.decl.key = vec![KeyType::Addr];
        set.elements = BTreeMap::new();
        keep(&map(&[3]), &mut set);
        assert!(set.elements.is_empty());
    }
}

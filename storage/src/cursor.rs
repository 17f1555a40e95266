//! Paging cursors: what a list hands out as `next` and reads back as `after`. The one reader
//! of them, for the read models and the storefront alike.

use std::str::FromStr;

/// A list's `after` cursor that the list did not hand out: refused, never read as the start
/// (a client that loops on it would page forever).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the after cursor is not one this list handed out")]
pub struct BadCursor;

/// A `<key>|<id>` cursor of a keyed list: the sort key and the id to continue after; `None`
/// without one.
pub fn keyed<K: FromStr>(after: Option<&str>) -> Result<Option<(K, String)>, BadCursor> {
    let Some(after) = after else { return Ok(None) };
    match after.rsplit_once('|') {
        Some((key, id)) if !id.is_empty() => Ok(Some((key.parse().map_err(|_| BadCursor)?, id.to_owned()))),
        _ => Err(BadCursor),
    }
}

/// An offset cursor (a ranked list's): how many results to skip; 0 without one.
pub fn offset<N: FromStr + Default>(after: Option<&str>) -> Result<N, BadCursor> {
    after.map_or(Ok(N::default()), |a| a.parse().map_err(|_| BadCursor))
}

//! Caps on long-lived event streams, in total and per client, as the gateway and the collector
//! both keep them: one client (an API key, or an address) cannot hold every slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open streams, counted in total and by client.
#[derive(Debug)]
pub struct StreamPermits {
    total: usize,
    per_client: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<String, usize>,
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is taken (`total` of them).
    Total(usize),
    /// This client holds `per_client` already.
    PerClient(usize),
}

/// One open stream; its slot frees when this drops.
#[derive(Debug)]
pub struct Permit {
    owner: Arc<StreamPermits>,
    client: String,
}

impl StreamPermits {
    pub fn new(total: usize, per_client: usize) -> StreamPermits {
        StreamPermits {
            total,
            per_client,
            open: Mutex::default(),
        }
    }

    pub fn try_acquire(self: &Arc<Self>, client: &str) -> Result<Permit, Refused> {
        let mut open = self.open.lock().expect("stream permits lock");
        let mine = open.by_client.get(client).copied().unwrap_or(0);
        if mine >= self.per_client {
            return Err(Refused::PerClient(self.per_client));
        }
        if open.total >= self.total {
            return Err(Refused::Total(self.total));
        }
        open.total += 1;
        *open.by_client.entry(client.to_owned()).or_insert(0) += 1;
        Ok(Permit {
            owner: self.clone(),
            client: client.to_owned(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("stream permits lock").total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().expect("stream permits lock");
        open.total -= 1;
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                // The map holds only clients with a stream open: it cannot grow with clients gone.
                open.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_client_cannot_take_every_slot_and_a_closed_stream_frees_its_slot() {
        let p = Arc::new(StreamPermits::new(3, 2));
        let a1 = p.try_acquire("a").unwrap();
        let _a2 = p.try_acquire("a").unwrap();
        assert_eq!(p.try_acquire("a").unwrap_err(), Refused::PerClient(2));
        let _b = p.try_acquire("b").unwrap();
        assert_eq!(p.try_acquire("c").unwrap_err(), Refused::Total(3));
        drop(a1);
        assert!(p.try_acquire("c").is_ok());
    }

    proptest! {
        /// Any sequence of opens and closes keeps both caps, and the counts return to zero.
        #[test]
        fn caps_hold_for_any_sequence(ops in proptest::collection::vec((0u8..4, any::<bool>()), 0..200)) {
            let p = Arc::new(StreamPermits::new(5, 2));
            let mut held: Vec<Permit> = Vec::new();
            for (client, open) in ops {
                if open {
                    if let Ok(permit) = p.try_acquire(&client.to_string()) {
                        held.push(permit);
                    }
                } else if !held.is_empty() {
                    held.remove(usize::from(client) % held.len());
                }
                prop_assert!(p.open() <= 5);
                for c in 0u8..4 {
                    let mine = held.iter().filter(|h| h.client == c.to_string()).count();
                    prop_assert!(mine <= 2);
                }
                prop_assert_eq!(p.open(), held.len());
            }
            held.clear();
            prop_assert_eq!(p.open(), 0);
            prop_assert!(p.open.lock().unwrap().by_client.is_empty());
        }
    }
}

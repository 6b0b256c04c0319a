//! The budgets an executor enforces, with the spend they are checked against: every agent's
//! ledger record as last read or written (`reconcile::budget::SpendBook`). The controller feeds
//! it from a watch of the ledger; the file mode from the state file.

use std::sync::Mutex;

use crate::reconcile::budget::{self, Budget, BudgetCheck, Charge, SpendBook};
use crate::resource::DynamicsLedgerSpec;

pub struct Budgets {
    rules: Vec<Budget>,
    book: Mutex<SpendBook>,
}

impl Budgets {
    pub fn new(rules: Vec<Budget>) -> Self {
        Budgets {
            rules,
            book: Mutex::new(SpendBook::default()),
        }
    }

    pub fn rules(&self) -> &[Budget] {
        &self.rules
    }

    /// Take in an agent's record (`name`: its ledger record's name), replacing what was known.
    pub fn put(&self, name: &str, record: &DynamicsLedgerSpec) {
        self.book
            .lock()
            .expect("budget book lock")
            .put(name, record);
    }

    pub fn remove(&self, name: &str) {
        self.book.lock().expect("budget book lock").remove(name);
    }

    /// Where every budget that applies to `charge` stands (nothing is held).
    pub fn standings(&self, charge: Charge) -> Vec<budget::Standing> {
        let book = self.book.lock().expect("budget book lock");
        budget::standings(&self.rules, &book, charge)
    }

    /// Check `charge` for the object `key` and, when it is within every budget, hold its
    /// spend in the book until `settle` or `release`: two passes of this process that check at
    /// once cannot both take the last room.
    pub fn reserve(&self, key: &str, charge: Charge) -> BudgetCheck {
        let mut book = self.book.lock().expect("budget book lock");
        let verdict = budget::check(&self.rules, &book, charge);
        if matches!(verdict, BudgetCheck::Within { .. }) {
            let held = budget::with_spend(
                &DynamicsLedgerSpec::default(),
                charge.now,
                charge.namespace,
                charge.account,
                charge.credits as i64,
            );
            book.put(&reserved(key), &held);
        }
        verdict
    }

    /// The reservation of `key` is on record now: `record` (named `name`) holds its spend.
    pub fn settle(&self, key: &str, name: &str, record: &DynamicsLedgerSpec) {
        let mut book = self.book.lock().expect("budget book lock");
        book.remove(&reserved(key));
        book.put(name, record);
    }

    /// Nothing was bought for `key` after all.
    pub fn release(&self, key: &str) {
        self.remove(&reserved(key));
    }
}

/// A reservation's place in the book: never a ledger record's name (those have no `/`).
fn reserved(key: &str) -> String {
    format!("reserved/{key}")
}

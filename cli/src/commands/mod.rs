pub mod keys;
pub mod pack;

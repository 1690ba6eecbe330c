//! Whole-app tests of StockWeb over real sockets, against in-process
//! StockData replicas: the one-server problem reproduced, a dead StockData,
//! and the binary's start-up errors.

mod support;

mod one_server;
mod process;
mod stockdata_down;

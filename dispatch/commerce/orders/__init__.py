"""Orders: what the REST layer, the background tasks and the load tools call.

The order flow (``lifecycle`` has the whole table):

* ``parse_new_order`` / ``parse_lines`` (``input``, pure) check a client's body;
  ``place_order`` (``placing``) prices it from the catalogue, applies promotions, reserves
  its stock and writes it, ``pending``, in one transaction;
* ``record_payment`` (``payments``) takes the gateway's callbacks, idempotently: ``paid``,
  or cancelled on a failed payment;
* ``vendor_decision``, ``cancel_order`` (``transitions``): the vendor accepts or rejects,
  and either side cancels before the order is ready;
* ``mark_ready``: the vendor has packed it; it becomes ``ready`` and opens its delivery, in
  one transaction, so it is the deliveries room's (``dispatch.deliveries.handoff``); the
  delivery side then takes the order to ``delivered`` (``records.on_delivery_changed_order``);
* ``return_order`` (``returns``): the customer sends goods back and is refunded;
* ``release_expired_reservations`` / ``run_reservation_sweeper`` (``expiry``) cancel
  ``pending`` orders whose stock reservation ran out;
* ``get_order`` and ``list_orders`` (``reads``) answer with the same order view.

Every transition writes ``order_status_history`` (who) and an ``order_events_outbox`` row
that the outbox relay publishes to ``order-events`` (``records``). With a ``cache``, the
order's entry and the stock entries of the products it touched are invalidated after commit.
Refusals are ``dispatch.core.errors.Refusal`` (422 input, 409 conflicts such as
``out_of_stock``), ``lifecycle.OrderNotFound`` (404: absent, or not this customer's or
vendor's) and ``lifecycle.IllegalOrderTransition`` (409); nothing is written when one is
raised.

Callers import each verb from the module that defines it (``placing.place_order``); this
package re-exports nothing, so importing a pure module of it (``input``, ``lifecycle``) never
loads the Postgres shells.
"""
